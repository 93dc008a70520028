"""python -m services.recon"""

from services.recon.server import build
from threegen.runtime.server import main

main(build)
