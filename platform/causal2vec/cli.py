"""The `causal2vec` command. Each subcommand is a thin shell over library calls; errors a user can fix exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from causal2vec.errors import Causal2VecError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="a saved model directory or a preset (tiny, minilm-small, ...)")
    p.add_argument("--device", default="auto", help="auto (cuda if visible, else cpu), cpu, cuda, cuda:1 ...")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--batch-size", type=int, default=32)


def _cmd_embed(args: argparse.Namespace) -> None:
    import numpy as np

    from causal2vec.model import Causal2Vec

    texts = list(args.texts)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise Causal2VecError(f"--input {args.input!r}: no such file")
        texts += [line.rstrip("\n") for line in path.read_text().splitlines()]
    if not texts:
        raise Causal2VecError("nothing to embed: pass texts as arguments or --input FILE (one text per line)")
    model = Causal2Vec.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    vectors = model.encode(texts, instruction=args.instruction, batch_size=args.batch_size,
                           show_progress=len(texts) > 10 * args.batch_size)
    if args.output and args.output.endswith(".npy"):
        np.save(args.output, vectors)
        print(f"wrote {vectors.shape[0]} x {vectors.shape[1]} embeddings to {args.output}", file=sys.stderr)
        return
    records = [{"index": i, "text": t, "embedding": v.tolist()} for i, (t, v) in enumerate(zip(texts, vectors))]
    payload = json.dumps({"model": args.model, "dim": int(vectors.shape[1]), "data": records})
    if args.output:
        Path(args.output).write_text(payload + "\n")
        print(f"wrote {len(records)} embeddings to {args.output}", file=sys.stderr)
    else:
        print(payload)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="causal2vec", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    embed = sub.add_parser("embed", help="embed texts and print JSON or write .json / .npy")
    _add_model_args(embed)
    embed.add_argument("texts", nargs="*", help="texts to embed")
    embed.add_argument("--input", help="a text file, one text per line")
    embed.add_argument("--instruction", help="query-side instruction (decoder only), e.g. 'Given a query, ...'")
    embed.add_argument("--output", help="write here instead of stdout: *.npy (float32 array) or *.json")
    embed.set_defaults(func=_cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_third_party(args.verbose)
    try:
        args.func(args)
    except Causal2VecError as exc:
        print(f"causal2vec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _quiet_third_party(verbose: bool) -> None:
    """transformers' load reports and shard progress bars drown a CLI's own output."""
    if verbose:
        return
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


if __name__ == "__main__":
    sys.exit(main())
