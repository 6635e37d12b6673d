"""Train FractalGen: ``python main.py --config config/train_small.yaml`` (see README)."""

from fractalgen.train import main

if __name__ == "__main__":
    raise SystemExit(main())
