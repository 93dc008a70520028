"""python -m services.render"""

from services.render.server import build
from threegen.runtime.server import main

main(build)
