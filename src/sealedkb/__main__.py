"""python -m sealedkb"""

from sealedkb.adapters.cli.app import main

main()
