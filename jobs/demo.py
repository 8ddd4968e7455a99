"""The README's main job (`make demo`): train -> bulk-embed -> serve -> query on a local Ray head, then shut it all
down and check that no Ray process is left. `python jobs/demo.py --tiny` is a 2-minute smoke run; `--help` lists
`--set`, `--limit-docs`, `--keep-serving`. The logic lives in causal2vec.tools.demo."""
import sys

from causal2vec.tools.demo import main

if __name__ == "__main__":
    sys.exit(main())
