"""Forecast yearly sunspot numbers one year ahead with a regularized rnnfused.LSTM, against naive baselines.

Data: the yearly mean sunspot numbers 1700-2008 that ship inside statsmodels (``sm.datasets.sunspots``;
SIDC, Royal Observatory of Belgium). The model reads the previous ``--window`` years (scaled by the
training mean and standard deviation) and predicts the next one; zoneout and variational recurrent
dropout regularize it, early stopping on a validation period picks the epoch. The last ``--test-years``
years are never seen in training or validation.

Baselines on the same test years: *persistence* (next year = this year) and *seasonal naive* with the
~11-year solar cycle (next year = the year 11 years before it). MAE and RMSE of all three are printed,
and a forecast-vs-actual plot is written.

    python3 examples/forecasting/main.py                 # ~1 min on 2 CPU cores
    python3 examples/forecasting/main.py --lstm torch    # torch.nn.LSTM, no in-recurrence regularizers
    python3 examples/forecasting/main.py --cell gru      # rnnfused.GRU (with --lstm torch: torch.nn.GRU)
    python3 examples/forecasting/main.py --smoke         # seconds, for CI

``--lstm`` picks the library (rnnfused or torch.nn) for either cell; ``--zoneout`` is on c and h for the
LSTM, on h for the GRU (it has no c). Writes ``runs/sunspots-<lstm>/forecast.png``
(``runs/sunspots-gru-<lstm>/`` for the GRU; ``--out-dir``); the last line printed is
``RESULT example=forecasting cell=... lstm=... lstm_mae=...`` (``lstm_*``: the recurrent model's
errors, whichever the cell). Needs statsmodels (``pip install statsmodels``).
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

SEASON = 11   # years: the mean length of the solar cycle


class Forecaster(nn.Module):
    """LSTM or GRU over the window -> linear head on the last step's output -> next (scaled) value.

    ``cell`` is "lstm" or "gru", ``lstm`` the library ("rnnfused" or "torch"); ``rates`` go to rnnfused."""

    def __init__(self, cell: str, lstm: str, hidden: int, layers: int, **rates: float):
        super().__init__()
        rnn = getattr(rnnfused if lstm == "rnnfused" else nn, cell.upper())    # e.g. rnnfused.GRU
        self.rnn = rnn(1, hidden, layers, batch_first=True, **rates)
        self.head = nn.Linear(hidden, 1)

    def forward(self, window: torch.Tensor) -> torch.Tensor:      # (B, L) -> (B,)
        out, _ = self.rnn(window.unsqueeze(-1))
        return self.head(out[:, -1]).squeeze(-1)


def load_sunspots() -> tuple[list[int], torch.Tensor]:
    try:
        import statsmodels.api as sm
    except ImportError:
        sys.exit("this example needs statsmodels: pip install statsmodels")
    df = sm.datasets.sunspots.load_pandas().data
    return [int(y) for y in df["YEAR"]], torch.tensor(df["SUNACTIVITY"].to_numpy(), dtype=torch.float32)


def windows(series: torch.Tensor, targets: range, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs series[t-length:t] and targets series[t] for every index t in ``targets``."""
    x = torch.stack([series[t - length:t] for t in targets])
    return x, series[list(targets)]


def metrics(pred: torch.Tensor, actual: torch.Tensor) -> tuple[float, float]:
    err = pred - actual
    return err.abs().mean().item(), err.pow(2).mean().sqrt().item()


def fit(model: nn.Module, n_train: int, batch_loss, val_mae, *, epochs: int, batch_size: int, lr: float,
        patience: int, log_every: int = 50) -> EarlyStopping:
    """Adam on ``batch_loss(indices)`` over shuffled mini-batches of the ``n_train`` training samples, early
    stopping on ``val_mae()`` (called after each epoch); the best epoch's weights are restored.

    Shared with ``seq2seq.py``: its encoder-decoder and its iterated one-step baseline train here too."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    stopper = EarlyStopping(patience=patience, mode="min")
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(n_train)
        for i in range(0, len(order), batch_size):
            loss = batch_loss(order[i:i + batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val = val_mae()
        stop = stopper.step(val, model)
        if epoch == 1 or epoch % log_every == 0 or stop:
            print(f"epoch {epoch:4d} | train mse {loss.item():.4f} (scaled) | val MAE {val:.2f}", flush=True)
        if stop:
            print(f"early stopping: best val MAE {stopper.best:.2f} at epoch {stopper.best_step}")
            break
    stopper.restore(model)
    return stopper


def plot_forecast(years, actual, forecasts: dict, first_test: int, path: Path, title: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no forecast plot", file=sys.stderr)
        return False
    start = max(0, first_test - 40)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(years[start:], actual[start:].tolist(), "k-", lw=1.5, label="actual")
    styles = {"persistence": "C1--", "seasonal naive (11 y)": "C2:"}     # the model: C0o-
    for name, pred in forecasts.items():
        ax.plot(years[first_test:], pred.tolist(), styles.get(name, "C0o-"), ms=3, lw=1.2, label=name)
    ax.axvline(years[first_test] - 0.5, color="grey", lw=0.8)
    ax.text(years[first_test], ax.get_ylim()[1] * 0.95, " test period", color="grey", va="top", fontsize=8)
    ax.set_xlabel("year")
    ax.set_ylabel("yearly mean sunspot number")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def build_parser() -> argparse.ArgumentParser:
    """The command line; ``seq2seq.py`` reads its defaults to configure its iterated one-step baseline."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cell", choices=["lstm", "gru"], default="lstm", help="the recurrent cell")
    p.add_argument("--lstm", choices=["rnnfused", "torch"], default="rnnfused",
                   help="the library: rnnfused.LSTM / rnnfused.GRU, or torch.nn.LSTM / torch.nn.GRU")
    p.add_argument("--smoke", action="store_true", help="a few epochs (seconds), for CI")
    p.add_argument("--out-dir", default=None, help="default runs/sunspots-<lstm>, runs/sunspots-gru-<lstm> for the GRU")
    p.add_argument("--window", type=int, default=22, help="years of history the model reads (two cycles)")
    p.add_argument("--test-years", type=int, default=40)
    p.add_argument("--val-years", type=int, default=30)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--epochs", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--patience", type=int, default=60)
    p.add_argument("--zoneout", type=float, default=0.1, help="on c and h (LSTM), on h (GRU) [rnnfused]")
    p.add_argument("--recurrent-dropout", type=float, default=0.1, help="[rnnfused]")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.smoke:
        args.epochs, args.hidden = 3, 8
    cell = args.cell.upper()
    run_name = ("sunspots" if args.cell == "lstm" else f"sunspots-{args.cell}") + f"-{args.lstm}"
    out_dir = Path(args.out_dir or os.path.join("runs", run_name))
    out_dir.mkdir(parents=True, exist_ok=True)
    wall_start = time.time()
    torch.manual_seed(args.seed)

    years, series = load_sunspots()
    n = len(series)
    first_test = n - args.test_years
    first_val = first_test - args.val_years
    mean, std = series[:first_val].mean(), series[:first_val].std()
    scaled = (series - mean) / std            # statistics of the training years only
    x_tr, y_tr = windows(scaled, range(args.window, first_val), args.window)
    x_val, y_val = windows(scaled, range(first_val, first_test), args.window)
    x_te, _ = windows(scaled, range(first_test, n), args.window)
    actual = series[first_test:]

    rates = dict(zoneout=args.zoneout, recurrent_dropout=args.recurrent_dropout)
    if args.lstm == "torch":
        ignored = {k: v for k, v in rates.items() if v}
        if ignored:
            print(f"note: torch.nn.{cell} cannot apply {ignored} inside the recurrence; they are off in this run")
        rates = {}
    model = Forecaster(args.cell, args.lstm, args.hidden, args.layers, **rates)
    print(f"sunspots {years[0]}-{years[-1]} ({n} years): train targets {years[args.window]}-{years[first_val - 1]}, "
          f"validation {years[first_val]}-{years[first_test - 1]}, test {years[first_test]}-{years[-1]}; "
          f"window {args.window} years, {args.lstm} {cell} hidden {args.hidden}")

    def predict(x):
        model.eval()
        with torch.no_grad():
            return model(x) * std + mean

    fit(model, len(y_tr), lambda batch: F.mse_loss(model(x_tr[batch]), y_tr[batch]),
        lambda: metrics(predict(x_val), y_val * std + mean)[0],
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience)

    forecasts = {cell: predict(x_te),
                 "persistence": series[first_test - 1:n - 1],
                 "seasonal naive (11 y)": series[first_test - SEASON:n - SEASON]}
    scores = {name: metrics(pred, actual) for name, pred in forecasts.items()}
    print(f"one-year-ahead forecasts for {years[first_test]}-{years[-1]}:")
    for name, (mae, rmse) in scores.items():
        print(f"  {name:24s} MAE {mae:6.2f}  RMSE {rmse:6.2f}")
    wall_s = time.time() - wall_start
    plot = out_dir / "forecast.png"
    title = (f"Yearly sunspots, one year ahead: {args.lstm} {cell} MAE {scores[cell][0]:.1f}, "
             f"persistence {scores['persistence'][0]:.1f}, seasonal naive {scores['seasonal naive (11 y)'][0]:.1f}")
    plotted = plot_forecast(years, series, forecasts, first_test, plot, title)
    if plotted:
        print(f"forecast plot: {plot}")
    (lm, lr_), (pm, pr), (sm_, sr) = scores[cell], scores["persistence"], scores["seasonal naive (11 y)"]
    print(f"RESULT example=forecasting cell={args.cell} lstm={args.lstm} test_years={args.test_years} "
          f"lstm_mae={lm:.2f} lstm_rmse={lr_:.2f} persistence_mae={pm:.2f} persistence_rmse={pr:.2f} "
          f"seasonal_mae={sm_:.2f} seasonal_rmse={sr:.2f} wall_s={wall_s:.1f}" + (f" plot={plot}" if plotted else "")
          + f" seed={args.seed}", flush=True)
    return dict(scores=scores, wall_s=wall_s)


if __name__ == "__main__":
    main()
