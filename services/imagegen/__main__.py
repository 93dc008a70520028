"""python -m services.imagegen"""

from services.imagegen.server import build
from threegen.runtime.server import main

main(build)
