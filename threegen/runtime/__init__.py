"""The one way every threegen service is started and served (see server.serve)."""
