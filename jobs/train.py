"""`ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/tiny.yaml [--set optim.max_steps=20]`
(or run it directly: a local Ray is started). The same as `causal2vec train`; see `causal2vec train --help`."""
import sys

from causal2vec.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
