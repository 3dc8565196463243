"""Code strings of :mod:`tests.adaptive_submissions`: broken MADEs and valid variants.

Each is appended to the reference's ``flows/maf.py`` (``CONDITIONAL_TO`` replaces one line of
``flows/train.py``).
"""

# -- MAF structure ----------------------------------------------------------------------------

NAN_MADE = """
_made_forward = MADE.forward
def _nan_forward(self, x):
    shift, log_scale = _made_forward(self, x)
    return shift * float("nan"), log_scale * float("nan")
MADE.forward = _nan_forward
"""
MADE_UNFINISHED = """
def _unfinished(self, x):
    raise NotImplementedError("MADE.forward: not finished")
MADE.forward = _unfinished
"""
DENSE_MASKS = """
def _dense(features, hidden_features, num_hidden, order):  # every connection: not autoregressive
    sizes = [features] + [hidden_features] * num_hidden + [features]
    return [torch.ones(b, a) for a, b in zip(sizes[:-1], sizes[1:])]
made_masks = _dense
"""
ZERO_MASKS = """
def _zero(features, hidden_features, num_hidden, order):  # no connection: a constant MADE
    sizes = [features] + [hidden_features] * num_hidden + [features]
    return [torch.zeros(b, a) for a, b in zip(sizes[:-1], sizes[1:])]
made_masks = _zero
"""

# -- valid variants -----------------------------------------------------------------------------

MADE_FORWARD_CALLED = """
def _forward(self, z):
    x = torch.zeros_like(z)
    for _ in range(self.features):
        shift, log_scale = self.made.forward(x)
        x = z * torch.exp(log_scale) + shift
    return x, log_scale.sum(-1)
def _inverse(self, x):
    shift, log_scale = self.made.forward(x)
    return (x - shift) * torch.exp(-log_scale), -log_scale.sum(-1)
MAF.forward, MAF.inverse = _forward, _inverse
"""
SAMPLING_D_PLUS_1 = """
def _forward(self, z):
    x = torch.zeros_like(z)
    for _ in range(self.features):
        shift, log_scale = self.made(x)
        x = z * torch.exp(log_scale) + shift
    _, log_det = self.inverse(x)  # one more pass, for the log-det
    return x, -log_det
MAF.forward = _forward
"""
FLOAT64_INSIDE = """
def _made_forward(self, x):
    h = x.double()
    layers = [m for m in self.net if isinstance(m, MaskedLinear)]
    for i, layer in enumerate(layers):
        h = F.linear(h, (layer.weight * layer.mask).double(), layer.bias.double())
        if i < len(layers) - 1:
            h = torch.relu(h)
    shift, log_scale = h.chunk(2, dim=-1)
    return shift, soft_clamp(log_scale)
def _forward(self, z):
    x = torch.zeros_like(z, dtype=torch.float64)
    for _ in range(self.features):
        shift, log_scale = self.made(x)
        x = z.double() * torch.exp(log_scale) + shift
    return x.to(z.dtype), log_scale.sum(-1).to(z.dtype)
def _inverse(self, x):
    shift, log_scale = self.made(x)
    z = (x.double() - shift) * torch.exp(-log_scale)
    return z.to(x.dtype), (-log_scale.sum(-1)).to(x.dtype)
MAF.forward, MAF.inverse = _forward, _inverse
MADE.forward = _made_forward
"""
RANDOM_DEGREES_UNREGISTERED = """
def _random_masks(features, hidden_features, num_hidden, order):  # the MADE paper's degrees
    rank = torch.empty(features, dtype=torch.long)
    rank[order] = torch.arange(features)
    degrees = [rank]
    for _ in range(num_hidden):
        low = int(degrees[-1].min()) if len(degrees) > 1 else 0
        high = max(features - 1, low + 1)
        degrees.append(torch.randint(low, high, (hidden_features,)))
    masks = [d_out[:, None] >= d_in[None, :] for d_in, d_out in pairwise(degrees)]
    masks.append(rank[:, None] > degrees[-1][None, :])
    return [mask.float() for mask in masks]
def _plain_init(self, in_features, out_features, mask):  # a plain attribute, not a buffer
    torch.nn.Linear.__init__(self, in_features, out_features)
    self.plain_mask = mask.bool()
def _plain_forward(self, x):
    return F.linear(x, self.weight * self.plain_mask, self.bias)
made_masks = _random_masks
MaskedLinear.__init__, MaskedLinear.forward = _plain_init, _plain_forward
"""
CONDITIONAL_TO = (
    "    flow.to(device)\n",
    "    if any(p.device != device for p in flow.parameters()):\n        flow.to(device)\n",
)
