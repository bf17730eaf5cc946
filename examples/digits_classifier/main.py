"""Classify handwritten digits with a bidirectional, regularized rnnfused.LSTM reading the image row by row.

scikit-learn's 8x8 digits (1,797 images, 10 classes; UCI "Optical Recognition of Handwritten Digits",
shipped inside scikit-learn): each image is a sequence of 8 rows of 8 pixels. A 2-layer bidirectional
LSTM (or GRU, ``--cell gru``) with zoneout, variational input/recurrent dropout and weight drop reads the
rows; the final states of both directions of the last layer go to a linear classifier. A stratified split
keeps 20% for testing and 15% of the rest for validation (early stopping, best weights restored).

    python3 examples/digits_classifier/main.py                  # ~1 min on 2 CPU cores
    python3 examples/digits_classifier/main.py --lstm torch     # torch.nn.LSTM, no in-recurrence regularizers
    python3 examples/digits_classifier/main.py --cell gru       # rnnfused.GRU (with --lstm torch: torch.nn.GRU)
    python3 examples/digits_classifier/main.py --smoke          # seconds, for CI

``--lstm`` picks the library (rnnfused or torch.nn) for either cell; ``--zoneout`` is on c and h for the
LSTM, on h for the GRU (it has no c). Writes ``runs/digits-<lstm>/confusion_matrix.png``
(``runs/digits-gru-<lstm>/`` for the GRU; ``--out-dir``); the last line printed is
``RESULT example=digits_classifier cell=... lstm=... test_acc=...``. Needs scikit-learn
(``pip install scikit-learn``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

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

from rnnfused.regularization import EarlyStopping  # noqa: E402

IN_RECURRENCE = ("zoneout", "input_dropout", "recurrent_dropout", "weight_drop")


class RowClassifier(nn.Module):
    """Bidirectional LSTM or GRU over the image rows -> concatenated final states -> dropout -> linear.

    ``cell`` is "lstm" or "gru", ``lstm`` the library ("rnnfused" or "torch"); ``rates`` go to rnnfused."""

    def __init__(self, cell: str, lstm: str, rows_features: int, hidden: int, layers: int, classes: int,
                 dropout: float, **rates: float):
        super().__init__()
        rnn = getattr(rnnfused if lstm == "rnnfused" else nn, cell.upper())    # e.g. rnnfused.GRU
        self.rnn = rnn(rows_features, hidden, layers, batch_first=True, bidirectional=True, dropout=dropout,
                       **rates)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        _, state = self.rnn(images)
        h_n = state[0] if isinstance(state, tuple) else state    # LSTM: (h_n, c_n); GRU: h_n (layers * 2, B, H)
        last = torch.cat([h_n[-2], h_n[-1]], dim=1)    # forward and backward direction of the last layer
        return self.head(self.drop(last))


def load_digits_split(seed: int):
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        sys.exit("this example needs scikit-learn: pip install scikit-learn")
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32) / 16.0        # (N, 8 rows, 8 pixels) in [0, 1]
    y = torch.tensor(digits.target, dtype=torch.long)
    idx = list(range(len(y)))
    train_idx, test_idx = train_test_split(idx, test_size=0.2, stratify=digits.target, random_state=seed)
    train_idx, val_idx = train_test_split(train_idx, test_size=0.15, stratify=digits.target[train_idx],
                                          random_state=seed)
    return (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx]), (x[test_idx], y[test_idx])


def accuracy_and_predictions(model, x, y):
    model.eval()
    with torch.no_grad():
        pred = model(x).argmax(1)
    return (pred == y).float().mean().item(), pred


def plot_confusion(y_true, y_pred, path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no confusion-matrix plot", file=sys.stderr)
        return False
    cm = torch.zeros(10, 10, dtype=torch.long)
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        cm[t, p] += 1
    fig, ax = plt.subplots(figsize=(5, 4.5))
    im = ax.imshow(cm.numpy(), cmap="Blues")
    for i in range(10):
        for j in range(10):
            if cm[i, j]:
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_xlabel("predicted digit")
    ax.set_ylabel("true digit")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm", help="the recurrent cell")
    p.add_argument("--lstm", choices=["rnnfused", "torch"], default="rnnfused",
                   help="the library: rnnfused.LSTM / rnnfused.GRU, or torch.nn.LSTM / torch.nn.GRU")
    p.add_argument("--smoke", action="store_true", help="a few epochs on a tiny model (seconds), for CI")
    p.add_argument("--out-dir", default=None, help="default runs/digits-<lstm>, runs/digits-gru-<lstm> for the GRU")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--patience", type=int, default=15)
    p.add_argument("--dropout", type=float, default=0.2, help="between layers and before the classifier")
    p.add_argument("--zoneout", type=float, default=0.1, help="on c and h (LSTM), on h (GRU) [rnnfused]")
    p.add_argument("--input-dropout", type=float, default=0.1, help="variational, on each layer's input [rnnfused]")
    p.add_argument("--recurrent-dropout", type=float, default=0.1, help="variational, on h_{t-1} [rnnfused]")
    p.add_argument("--weight-drop", type=float, default=0.2, help="DropConnect on W_hh [rnnfused]")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.smoke:
        args.hidden, args.epochs, args.patience = 16, 2, 2
    cell = args.cell.upper()
    run_name = ("digits" if args.cell == "lstm" else f"digits-{args.cell}") + f"-{args.lstm}"
    out_dir = Path(args.out_dir or os.path.join("runs", run_name))
    out_dir.mkdir(parents=True, exist_ok=True)
    wall_start = time.time()
    torch.manual_seed(args.seed)

    (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = load_digits_split(args.seed)
    rates = {k: getattr(args, k) for k in IN_RECURRENCE}
    if args.lstm == "torch":
        ignored = {k: v for k, v in rates.items() if v}
        if ignored:
            print(f"note: torch.nn.{cell} cannot apply {ignored} inside the recurrence; they are off in this run")
        rates = {}
    model = RowClassifier(args.cell, args.lstm, 8, args.hidden, args.layers, 10, args.dropout, **rates)
    print(f"digits: {len(y_tr)} train / {len(y_val)} validation / {len(y_te)} test images, 8 rows of 8 pixels; "
          f"{args.layers}-layer bidirectional {cell} ({args.lstm}), hidden {args.hidden}, "
          f"{sum(q.numel() for q in model.parameters()):,} parameters")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    stopper = EarlyStopping(patience=args.patience, mode="max")

    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(y_tr))
        total = 0.0
        for i in range(0, len(order), args.batch_size):
            batch = order[i:i + args.batch_size]
            loss = F.cross_entropy(model(x_tr[batch]), y_tr[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        val_acc, _ = accuracy_and_predictions(model, x_val, y_val)
        stop = stopper.step(val_acc, model)
        if epoch == 1 or epoch % 5 == 0 or stop or epoch == args.epochs:
            print(f"epoch {epoch:3d} | train loss {total / len(y_tr):.4f} | val acc {val_acc:.4f}", flush=True)
        if stop:
            print(f"early stopping: best val acc {stopper.best:.4f} at epoch {stopper.best_step}")
            break
    stopper.restore(model)

    test_acc, pred = accuracy_and_predictions(model, x_te, y_te)
    wall_s = time.time() - wall_start
    plot = out_dir / "confusion_matrix.png"
    plotted = plot_confusion(y_te, pred, plot, f"8x8 digits, bidirectional {args.lstm} {cell}: test acc {test_acc:.3f}")
    if plotted:
        print(f"confusion matrix: {plot}")
    print(f"RESULT example=digits_classifier cell={args.cell} lstm={args.lstm} epochs={stopper.steps} "
          f"val_acc={stopper.best:.4f} test_acc={test_acc:.4f} test_errors={int((pred != y_te).sum())}/{len(y_te)} "
          f"wall_s={wall_s:.1f}" + (f" plot={plot}" if plotted else "") + f" seed={args.seed}", flush=True)
    return dict(test_acc=test_acc, wall_s=wall_s)


if __name__ == "__main__":
    main()
