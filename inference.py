"""Sample from a checkpoint: ``python inference.py --checkpoint PATH --mode unconditional``."""

from fractalgen.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
