"""Sample text from a language model trained by main.py.

    python3 examples/word_language_model/generate.py --checkpoint runs/cpu-demo-rnnfused/model.pt \\
        --words 200 --temperature 0.8 --prompt "The game"

A character-level model (``--char``) writes ``--words`` characters and reads ``--prompt`` as characters.
``--temperature`` divides the log-probabilities before sampling: below 1 is more conservative, above 1 more
diverse. The vocabulary and the model's configuration are read from the checkpoint (``model.pt`` or
``checkpoint.pt``). ``--lstm torch`` loads rnnfused-trained weights into ``torch.nn.LSTM`` (the parameter
names are the same); in eval mode the two compute the same thing except for zoneout, whose expectation
only rnnfused applies. A model trained with ``--layer-norm`` runs only with rnnfused (torch.nn.LSTM has no
layer norm).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
try:  # the importable rnnfused (installed, or on PYTHONPATH), else this checkout's, built in place
    try:
        import rnnfused  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name != "rnnfused":
            raise
        sys.path.insert(0, str(HERE.parents[1]))
        import rnnfused  # noqa: F401
except ImportError as e:
    sys.exit(f"{Path(__file__).name}: cannot import rnnfused: {e}")

from model import RNNModel  # noqa: E402


def load_model(path, lstm: str | None = None, device: str = "cpu"):
    ckpt = torch.load(path, map_location=device, weights_only=False)
    a = ckpt["args"]
    vocab = ckpt["vocab"]
    if a.get("layer_norm") and (lstm or a["lstm"]) == "torch":
        sys.exit(f"{Path(__file__).name}: {path} is a layer-normalized LSTM (--layer-norm); torch.nn.LSTM "
                 "has no layer norm, use --lstm rnnfused")
    model = RNNModel(len(vocab), a["emsize"], a["nhid"], a["nlayers"], lstm=lstm or a["lstm"],
                     tie_weights=a["tied"], dropout=a["dropout"], dropouth=a["dropouth"],
                     dropouti=a["dropouti"], dropoute=a["dropoute"], wdrop=a["wdrop"],
                     zoneout_c=a["zoneout_c"], zoneout_h=a["zoneout_h"],
                     recurrent_dropout=a["recurrent_dropout"], candidate_dropout=a["candidate_dropout"],
                     softmax=a.get("softmax", "full"), cutoffs=a.get("cutoffs"),
                     ignore_unsupported=True, layer_norm=a.get("layer_norm", False))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), vocab


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default="runs/cpu-demo-rnnfused/model.pt")
    p.add_argument("--words", type=int, default=100, help="number of words (characters, for a --char model) to generate")
    p.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative")
    p.add_argument("--prompt", default="", help="words to start from (unknown words become <unk>)")
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--lstm", choices=["rnnfused", "torch"], default=None, help="default: the one it was trained with")
    p.add_argument("--device", default="cpu")
    p.add_argument("--outf", default="-", help="output file, - for stdout")
    args = p.parse_args(argv)
    if args.temperature <= 0:
        p.error("--temperature must be > 0")

    torch.manual_seed(args.seed)
    model, vocab = load_model(args.checkpoint, args.lstm, args.device)
    char = bool(torch.load(args.checkpoint, map_location="cpu", weights_only=False)["args"].get("char"))
    word2idx = {w: i for i, w in enumerate(vocab)}
    if char:   # unknown characters are id 0; a model starts from a line's end
        prompt = [word2idx.get(c, 0) for c in args.prompt] or [word2idx.get("\n", 0)]
    else:
        unk = word2idx.get("<unk>", 0)
        prompt = [word2idx.get(w, unk) for w in args.prompt.split()] or [word2idx.get("<eos>", 0)]

    hidden = model.init_hidden(1)
    words = [vocab[i] for i in prompt] if args.prompt else []
    with torch.no_grad():
        tokens = torch.tensor(prompt, device=args.device).view(-1, 1)
        for _ in range(args.words):
            output, hidden, _ = model(tokens, hidden)
            log_probs = model.decoder.log_prob(output[-1])[0]
            probs = torch.softmax(log_probs.double() / args.temperature, dim=-1)
            idx = int(torch.multinomial(probs, 1))
            words.append(vocab[idx])
            tokens = torch.tensor([[idx]], device=args.device)
    text = "".join(words) if char else " ".join(words).replace(" <eos> ", "\n").replace("<eos>", "\n")
    if args.outf == "-":
        print(text)
    else:
        Path(args.outf).write_text(text + "\n")
        print(f"wrote {args.words} {'characters' if char else 'words'} to {args.outf}")
    return text


if __name__ == "__main__":
    main()
