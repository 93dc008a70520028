"""python -m gateway"""

from gateway.server import build
from threegen.runtime.server import main

main(build)
