"""Models a practitioner would write, for the torch helpers' tests (not the study's MLP)."""
import torch
from torch import nn

DT = torch.float64
KEEP, TRAIN = [0, 2, 3, 5], [1, 4]


class CNN(nn.Module):
    """conv -> ReLU -> linear, on 1x8x8 images."""

    def __init__(self, n_out=6, act=torch.relu):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(3 * 6 * 6, n_out)
        self.act = act

    def forward(self, x):
        return self.fc(self.act(self.conv(x)).flatten(1))


class DeepCNN(nn.Module):
    """Two convs (one without bias, strided), LayerNorm, a hidden Linear and a head."""

    def __init__(self, n_out=6, width=24):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, bias=False)
        self.norm = nn.LayerNorm(6 * 3 * 3)
        self.hidden = nn.Linear(6 * 3 * 3, width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        h = torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1)
        return self.head(torch.tanh(self.hidden(self.norm(h))))


class TwoTower(nn.Module):
    """A shared trunk; outputs 0-2 from one tower, 3-4 from another."""

    def __init__(self, d_in=8):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, 4), nn.Tanh())
        self.kept_tower = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3))
        self.new_tower = nn.Linear(4, 2)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.kept_tower(h), self.new_tower(h)], dim=1)


class DropoutMLP(nn.Module):
    """Linear -> LayerNorm -> ReLU -> Dropout -> Linear head."""

    def __init__(self, d_in=8, width=16, n_out=6, p=0.3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, width), nn.LayerNorm(width), nn.ReLU(),
                                  nn.Dropout(p))
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        return self.head(self.body(x))


class BatchNormCNN(nn.Module):
    """conv -> BatchNorm -> ReLU -> linear."""

    def __init__(self, n_out=6):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 6 * 6, n_out)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class TransformerClassifier(nn.Module):
    """Token embedding + learned positions -> 2 encoder layers (dropout) -> mean -> Linear head."""

    def __init__(self, vocab=20, d=16, n_out=5, length=6, tied=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(length, d))
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab if tied else n_out)
        if tied:  # a language-model head sharing the embedding's weight
            self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.pos).mean(1))


class TwoNormMLP(nn.Module):
    """Linear -> BatchNorm1d -> ReLU -> Linear -> BatchNorm1d -> tanh -> Linear head."""

    def __init__(self, d_in=8, width=12, n_out=6):
        super().__init__()
        self.fc1, self.bn1 = nn.Linear(d_in, width), nn.BatchNorm1d(width)
        self.fc2, self.bn2 = nn.Linear(width, width), nn.BatchNorm1d(width)
        self.head = nn.Linear(width, n_out)

    def forward(self, x):
        h = torch.relu(self.bn1(self.fc1(x)))
        return self.head(torch.tanh(self.bn2(self.fc2(h))))


class LoRAMLP(nn.Module):
    """A frozen MLP whose hidden Linear has a LoRA adapter, W x + B A x, with B = 0 at the start."""

    def __init__(self, d_in=8, width=12, n_out=6, rank=2):
        super().__init__()
        self.body = nn.Linear(d_in, width).requires_grad_(False)
        self.head = nn.Linear(width, n_out).requires_grad_(False)
        self.lora_a = nn.Parameter(0.3 * torch.randn(rank, d_in))
        self.lora_b = nn.Parameter(torch.zeros(width, rank))

    def forward(self, x):
        return self.head(torch.tanh(self.body(x) + x @ self.lora_a.T @ self.lora_b.T))


def make(cls, seed=0, **kwargs):
    torch.manual_seed(seed)
    return cls(**kwargs).to(DT)


def images(n, seed, size=8):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed), dtype=DT)


def tokens(n, seed, vocab=20, length=6):
    return torch.randint(0, vocab, (n, length), generator=torch.Generator().manual_seed(seed))


def targets(n, n_out, seed=3):
    return torch.randn(n, n_out, generator=torch.Generator().manual_seed(seed), dtype=DT)


X, X_EVAL = images(64, 1), images(50, 2)
Y = targets(64, 6)


def fit(model, opt, steps, cols=None, x=X, y=Y):
    """Take full-batch MSE steps (on the `cols` outputs only, if given)."""
    for _ in range(steps):
        opt.zero_grad()
        err = model(x) - y
        (err if cols is None else err[:, cols]).pow(2).mean().backward()
        opt.step()


def outputs(model, x=X_EVAL):
    """The model's outputs in eval mode (each module's mode put back)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        out = model(x).clone()
    for m, mode in modes:
        m.training = mode
    return out


OPTIMIZERS = {
    "adamw_decay": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "sgd_momentum_decay": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.1),
    "adam_l2": lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.1),
}


def snapshot(model):
    """Everything a refused call must leave as it was: state dict, flags, module types."""
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()],
            [type(m).__name__ for m in model.modules()])


def unchanged(model, before):
    after = snapshot(model)
    return after[1:] == before[1:] and list(after[0]) == list(before[0]) and all(
        torch.equal(before[0][k], v) for k, v in after[0].items())
