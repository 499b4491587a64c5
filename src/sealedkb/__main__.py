"""python -m sealedkb"""

from sealedkb.adapters.cli import main

main()
