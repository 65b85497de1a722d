import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import nfopt
from nfopt import WeightSpaceFeatures
from nfopt.lopt import SGD, Adam, LearnedOptimizer, LearnedUpdateRule, load_optimizer, save_optimizer
from nfopt.lopt.layout import DESCRIBED


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8, bias=False), nn.ReLU(), nn.Linear(8, 3))


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def data(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 6, generator=g) if isinstance(model[0], nn.Linear) else torch.randn(32, 1, 6, 6, generator=g)
    return x, torch.randint(0, 3, (32,), generator=g)


def train(model, opt, steps, seed=0):
    x, y = data(model, seed)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def trained_rule(kind="nfn_np"):
    torch.manual_seed(1)
    rule = LearnedUpdateRule(kind, meta_model={"channels": 4} if kind != "mlp" else {"hidden": 8})
    with torch.no_grad():
        for p in rule.meta_model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return rule


@pytest.mark.parametrize("make", [mlp, cnn])
@pytest.mark.parametrize(
    "rule, ref",
    [
        (Adam(lr=1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
        (SGD(lr=1e-2, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9)),
    ],
)
def test_baselines_equal_torch_optim(make, rule, ref):
    a, b = make(), make()
    train(a, LearnedOptimizer(a.parameters(), rule), 6)
    train(b, ref(b.parameters()), 6)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def feats(opt, get):
    return opt._features(opt.spaces[0], opt._params(), get, torch.float32)


@pytest.mark.parametrize("make", [mlp, cnn])
def test_drop_in_equals_functional_update(make):
    rule = trained_rule()
    model = make()
    opt = LearnedOptimizer(model.parameters(), rule)
    x, y = data(model)
    state = rule.init(opt.spec)
    params = feats(opt, lambda p: p.detach().clone())
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        grads = feats(opt, lambda p: p.grad.clone())
        params, state = rule.update(None, state, params, grads)
        # bias slots of bias-free layers are never written back, so they stay zero
        params = WeightSpaceFeatures(
            params.weights, [b if has else torch.zeros_like(b) for b, has in zip(params.biases, opt.spec.has_bias)]
        )
        opt.step()
        assert feats(opt, lambda p: p.detach()).allclose(params, atol=1e-7)


def test_bias_free_layer_is_never_given_a_bias():
    model = mlp()
    train(model, LearnedOptimizer(model.parameters(), trained_rule()), 3)
    assert model[2].bias is None


def test_state_dict_resumes_exactly():
    rule = trained_rule("nft")
    a = mlp()
    opt_a = LearnedOptimizer(a.parameters(), rule)
    train(a, opt_a, 6)
    b = mlp()
    opt_b = LearnedOptimizer(b.parameters(), rule)
    train(b, opt_b, 3)
    saved_model, saved_opt = {k: v.clone() for k, v in b.state_dict().items()}, opt_b.state_dict()
    c = mlp(seed=9)
    c.load_state_dict(saved_model)
    opt_c = LearnedOptimizer(c.parameters(), rule)
    opt_c.load_state_dict(saved_opt)
    train(c, opt_c, 3)
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)


def test_parameters_outside_a_chain_are_optimized_tensor_by_tensor():
    bn = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    for params in (bn, bn.parameters()):
        opt = LearnedOptimizer(params, Adam(1e-2))
        before = [p.detach().clone() for p in bn.parameters()]
        opt.zero_grad()
        bn(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        assert all(not torch.equal(a, b) for a, b in zip(before, bn.parameters()))  # every parameter moved
    # a list that does not chain is read tensor by tensor, each a one-layer weight space
    opt = LearnedOptimizer(bn.parameters(), Adam())
    assert [sp.kind for sp in opt.spaces] == ["tensor"] * 6
    # the model: the Linear layers on both sides of the norm are separate weight spaces
    opt = LearnedOptimizer(bn, Adam())
    assert [sp.kind for sp in opt.spaces] == ["chain", "chain", "tensor", "tensor"]


def test_save_and_load(tmp_path):
    rule = trained_rule("nfn_hnp")
    path = save_optimizer(rule, tmp_path / "lopt.pt", metadata={"meta_steps": 3})
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == "nfopt.learned_optimizer/1"
    trained = nfopt.load_optimizer(path)
    assert trained.metadata == {"meta_steps": 3}
    a, b = mlp(), mlp()
    train(a, LearnedOptimizer(a.parameters(), rule), 4)
    train(b, trained(b.parameters()), 4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable"):
        load_optimizer(tmp_path / "junk.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="format 'other'"):
        load_optimizer(tmp_path / "other.pt")


def test_untrained_learned_optimizer_trains_like_adam():
    a, b = mlp(), mlp()
    train(a, LearnedOptimizer(a.parameters(), LearnedUpdateRule("mlp", step_mult=1e-2, bound=100.0)), 20)
    train(b, torch.optim.Adam(b.parameters(), lr=1e-2), 20)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


class _Reversed(nn.Module):
    """A square MLP whose layers are registered in the opposite order to the one forward uses."""

    def __init__(self):
        super().__init__()
        self.second = nn.Linear(6, 6)
        self.first = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


def test_a_model_is_read_in_the_order_forward_calls_its_layers():
    model = _Reversed()
    opt = LearnedOptimizer(model, LearnedUpdateRule("nfn_np", meta_model={"channels": 4, "layers": 2}))
    names = [n for n, _ in nfopt.lopt.module_parameters(model)]
    assert names == ["first.weight", "first.bias", "second.weight", "second.bias", "head.weight", "head.bias"]
    assert [sp.kind for sp in opt.spaces] == ["chain"]
    assert opt.spec.weight_shapes == ((6, 6), (6, 6), (2, 6))


class _Block(nn.Module):
    """Embedding, a residual attention-like block with a LayerNorm, an MLP head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.norm = nn.LayerNorm(8)
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 3)
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, tokens):
        x = self.emb(tokens)
        h = self.norm(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2), -1) @ self.v(h)
        x = x + self.scale * att
        return self.fc2(torch.relu(self.fc1(x.mean(1))))


def test_any_module_is_optimized_and_only_true_chains_are_chains():
    torch.manual_seed(0)
    model = _Block()
    opt = nfopt.load_optimizer("nfn_np_small")(model)
    chains = [list(sp.views) for sp in opt.spaces if sp.kind == "chain"]
    assert [(16, 8), (3, 16)] in chains  # fc1 -> relu -> fc2: one MLP weight space
    assert all(len(c) == 1 for c in chains if c != [(16, 8), (3, 16)])  # q, k, v: alone
    names = [n for n, _ in nfopt.lopt.module_parameters(model)]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # every parameter, once
    tokens, y = torch.randint(10, (16, 5)), torch.randint(3, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(tokens), y)
        loss.backward()
        opt.step(loss=loss)
        losses.append(loss.item())
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert losses[-1] < losses[0]


def test_param_groups_added_later_and_foreign_state_dicts_are_refused():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = LearnedOptimizer(model, LearnedUpdateRule("nfn_np", meta_model={"channels": 4, "layers": 2}))
    with pytest.raises(ValueError, match="fixed weight spaces"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))]})
    adam = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="not a LearnedOptimizer state_dict"):
        opt.load_state_dict(adam.state_dict())
    other = LearnedOptimizer(
        nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)),
        LearnedUpdateRule("nfn_np", meta_model={"channels": 4, "layers": 2}),
    )
    with pytest.raises(ValueError, match="another model or rule"):
        opt.load_state_dict(other.state_dict())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_parameters_of_any_float_dtype_train_in_their_dtype(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    opt = nfopt.load_optimizer("nfn_np_small")(model)
    x, y = torch.randn(32, 4, dtype=dtype), torch.randint(3, (32,))
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step(loss=loss)
        losses.append(loss.item())
    assert all(p.dtype == dtype for p in model.parameters())
    assert losses[-1] < losses[0]


def test_lr_schedulers_param_groups_and_weight_decay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(3, (16,))

    def run(make_opt, steps=5):
        m = copy.deepcopy(model)
        opt = make_opt(m)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
            sched.step()
        return m, opt

    rule = Adam(1e-2)
    plain, _ = run(lambda m: LearnedOptimizer(m, rule))
    # lr 0 in one group: its parameters never move; the other group's do
    frozen, opt = run(
        lambda m: LearnedOptimizer(
            [{"params": list(m[0].parameters()), "lr": 0.0}, {"params": list(m[2].parameters())}], rule
        )
    )
    assert [g["lr"] for g in opt.param_groups] == [0.0, pytest.approx(0.0, abs=1e-12)]  # cosine reached 0
    assert all(torch.equal(a, b) for a, b in zip(frozen[0].parameters(), model[0].parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(frozen[2].parameters(), model[2].parameters()))
    # decoupled weight decay shrinks the weights further than no decay
    decayed, _ = run(lambda m: LearnedOptimizer(m, rule, weight_decay=1.0))
    assert decayed[0].weight.norm() < plain[0].weight.norm()
    with pytest.raises(ValueError, match="weight_decay=-1"):
        LearnedOptimizer(model, rule, weight_decay=-1)


def test_state_dict_of_many_weight_spaces_resumes_exactly():
    torch.manual_seed(0)
    tokens, y = torch.randint(10, (16, 5)), torch.randint(3, (16,))
    rule = nfopt.load_optimizer("nfn_np_small").rule

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(tokens), y).backward()
            opt.step()

    a = _Block()
    b = copy.deepcopy(a)
    opt_a = LearnedOptimizer(a, rule)
    train(a, opt_a, 4)
    opt_b = LearnedOptimizer(b, rule)
    train(b, opt_b, 2)
    c = _Block()
    c.load_state_dict(b.state_dict())
    opt_c = LearnedOptimizer(c, rule)
    opt_c.load_state_dict(opt_b.state_dict())
    train(c, opt_c, 2)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


class _Attend(nn.Module):
    def __init__(self, kdim=None):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        kv = x if self.attn.kdim == 8 else x[..., : self.attn.kdim]
        return self.head(self.attn(x, kv, kv, need_weights=False)[0].mean(1))


class _Recurrent(nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn = cell(8, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def _permute_attention(model: _Attend, g: torch.Generator) -> None:
    """Permute query/key dims jointly and value dims (with the output's columns) within each head,
    and swap the two heads: the function is unchanged."""
    m, e, h = model.attn, 8, 4
    qk = torch.cat([torch.randperm(h, generator=g) + k * h for k in (1, 0)])  # heads swapped, dims permuted
    vo = torch.cat([torch.randperm(h, generator=g) + k * h for k in (1, 0)])
    with torch.no_grad():
        if m._qkv_same_embed_dim:
            w = m.in_proj_weight
            w[:e], w[e : 2 * e], w[2 * e :] = w[:e][qk].clone(), w[e : 2 * e][qk].clone(), w[2 * e :][vo].clone()
        else:
            for name, perm in (("q", qk), ("k", qk), ("v", vo)):
                p = getattr(m, f"{name}_proj_weight")
                p.copy_(p[perm].clone())
        b = m.in_proj_bias
        b[:e], b[e : 2 * e], b[2 * e :] = b[:e][qk].clone(), b[e : 2 * e][qk].clone(), b[2 * e :][vo].clone()
        m.out_proj.weight.copy_(m.out_proj.weight[:, vo].clone())


def _permute_recurrent(model: _Recurrent, g: torch.Generator) -> None:
    """Permute each layer's hidden units (every gate's rows, the recurrent columns, the next
    layer's input columns, the head's columns): the function is unchanged."""
    rnn, hsz = model.rnn, 6
    gates = rnn.weight_ih_l0.shape[0] // hsz
    prev = None
    with torch.no_grad():
        for layer in range(2):
            perm = torch.randperm(hsz, generator=g)
            rows = torch.cat([perm + k * hsz for k in range(gates)])
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                p = getattr(rnn, f"{name}_l{layer}")
                p.copy_(p[rows].clone())
            whh = getattr(rnn, f"weight_hh_l{layer}")
            whh.copy_(whh[:, perm].clone())
            if prev is not None:
                wih = getattr(rnn, f"weight_ih_l{layer}")
                wih.copy_(wih[:, prev].clone())
            prev = perm
        model.head.weight.copy_(model.head.weight[:, prev].clone())


@pytest.mark.parametrize(
    "make, permute, kinds",
    [
        (lambda: _Attend(), _permute_attention, {"attention_qk", "attention_vo"}),
        (lambda: _Attend(kdim=5), _permute_attention, {"attention_qk", "attention_vo"}),
        (lambda: _Recurrent(nn.LSTM), _permute_recurrent, {"recurrent"}),
        (lambda: _Recurrent(nn.GRU), _permute_recurrent, {"recurrent"}),
        (lambda: _Recurrent(nn.RNN), _permute_recurrent, {"recurrent"}),
    ],
)
def test_attention_and_recurrent_weight_spaces_respect_their_symmetries(make, permute, kinds):
    """Attention heads and recurrent units are weight spaces whose coupled tensors the rule sees
    together: a learned update of a permuted (same-function) model is the permuted update."""
    torch.manual_seed(0)
    model = make()
    twin = copy.deepcopy(model)
    permute(twin, torch.Generator().manual_seed(3))
    x, y = torch.randn(16, 5, 8), torch.randint(0, 3, (16,))
    assert torch.allclose(model(x), twin(x), atol=1e-5)  # the symmetry keeps the function
    opts = [LearnedOptimizer(m, trained_rule(), describe=DESCRIBED) for m in (model, twin)]
    assert kinds <= {sp.kind for sp in opts[0].spaces}
    names = sorted(n for n, _ in model.named_parameters())
    assert sorted(n for n, _ in nfopt.lopt.discover_spaces(model, DESCRIBED)[0]) == names
    for _ in range(3):
        for m, opt in zip((model, twin), opts):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(x), y)
            loss.backward()
            if isinstance(m, _Attend):  # the key bias's gradient is 0 (softmax ignores a shift of a
                m.attn.in_proj_bias.grad[8:16] = 0  # query's scores); its float noise, normalised, is not
            opt.step(loss=loss)
    permute(model, torch.Generator().manual_seed(3))  # the same permutation, applied after training
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=2e-5), n
    assert torch.allclose(model(x), twin(x), atol=1e-4)


def test_a_module_without_chains_that_fx_cannot_trace_is_optimized():
    """An LSTM alone (fx cannot trace it; no Linear/Conv layer): its tensors, or with ``describe``
    its recurrent weight spaces; unknown descriptions are refused."""
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5)
    assert {sp.kind for sp in LearnedOptimizer(lstm, trained_rule()).spaces} == {"tensor"}  # by default
    opt = LearnedOptimizer(lstm, trained_rule(), describe=["recurrent"])
    assert {sp.kind for sp in opt.spaces} == {"recurrent"} and len(opt.spaces) == 4
    before = [p.detach().clone() for p in lstm.parameters()]
    lstm(torch.randn(7, 2, 3))[0].square().mean().backward()
    opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, lstm.parameters()))
    with pytest.raises(ValueError, match="describe=\\['lstm'\\]"):
        LearnedOptimizer(lstm, trained_rule(), describe=["lstm"])


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.head(self.layer(self.emb(tokens)).mean(1))


def test_a_transformer_layer_gets_the_permuted_update_for_a_permuted_residual_stream():
    """Permuting the residual stream (the model dims: embedding columns, norms, every projection
    reading or writing it) keeps the function; the learned update follows the permutation."""
    torch.manual_seed(0)
    model = _Encoder()
    twin = copy.deepcopy(model)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(5))

    def permute(m: _Encoder) -> None:
        a, lay = m.layer.self_attn, m.layer
        with torch.no_grad():
            for p in (m.emb.weight, a.in_proj_weight, lay.linear1.weight, m.head.weight):
                p.copy_(p[:, perm].clone())
            for p in (a.out_proj.weight, a.out_proj.bias, lay.linear2.weight, lay.linear2.bias):
                p.copy_(p[perm].clone())
            for p in (lay.norm1.weight, lay.norm1.bias, lay.norm2.weight, lay.norm2.bias):
                p.copy_(p[perm].clone())

    permute(twin)
    tokens, y = torch.randint(11, (16, 5)), torch.randint(0, 3, (16,))
    assert torch.allclose(model(tokens), twin(tokens), atol=1e-5)
    opts = [LearnedOptimizer(m, trained_rule(), describe=DESCRIBED) for m in (model, twin)]
    assert {"chain", "attention_qk", "attention_vo"} <= {sp.kind for sp in opts[0].spaces}
    for _ in range(3):
        for m, opt in zip((model, twin), opts):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(m(tokens), y)
            loss.backward()
            m.layer.self_attn.in_proj_bias.grad[8:16] = 0  # exactly 0 in theory (see above)
            opt.step(loss=loss)
    permute(model)
    for (n, a), b in zip(model.named_parameters(), twin.parameters()):
        assert torch.allclose(a, b, atol=2e-5), n


def test_state_dict_resumes_exactly_in_a_fresh_process(tmp_path):
    """Model and optimizer state saved here, loaded (``weights_only``) and trained on in another
    Python process: the same parameters as training on here."""
    model = mlp()
    opt = nfopt.load_optimizer("nfn_np_small")(model, num_steps=20, weight_decay=0.01)
    train(model, opt, 3)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    train(model, opt, 3)
    code = (
        "import sys, torch, nfopt\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_optimizer import mlp, train\n"
        f"ck = torch.load({str(tmp_path / 'ckpt.pt')!r}, weights_only=True)\n"
        "model = mlp(seed=5)\n"
        "model.load_state_dict(ck['model'])\n"
        "opt = nfopt.load_optimizer('nfn_np_small')(model, num_steps=20, weight_decay=0.01)\n"
        "opt.load_state_dict(ck['opt'])\n"
        "train(model, opt, 3)\n"
        f"torch.save(model.state_dict(), {str(tmp_path / 'after.pt')!r})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    after = torch.load(tmp_path / "after.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, after[k]), k


@pytest.mark.cuda
def test_rule_and_state_follow_cuda_parameters_and_load_on_the_cpu():
    model = mlp().cuda()
    opt = nfopt.load_optimizer("nfn_np_small")(model)
    x, y = (t.cuda() for t in data(model))
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step(loss=loss)
    assert all(v.device.type == "cuda" for st in opt._rule_states for v in st.values())  # tensors and WSFs
    cpu = mlp()
    cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
    opt_cpu = nfopt.load_optimizer("nfn_np_small")(cpu)
    opt_cpu.load_state_dict(opt.state_dict())  # CUDA rule state -> the CPU parameters' device
    train(cpu, opt_cpu, 1)
    assert all(torch.isfinite(p).all() for p in cpu.parameters())


def test_a_compiled_rule_takes_the_eager_steps():
    """``compile=True`` (``torch.compile`` of a private copy of the rule): the same updates up to
    float rounding on a model of two chains with a learned schedule; the caller's rule stays eager."""
    rule = nfopt.load_optimizer("nfn_np_small")
    a, b = mlp(), mlp()
    opt_a = rule(a, num_steps=20)
    opt_b = rule(b, num_steps=20, compile=True)
    assert opt_b.rule is not rule.rule and getattr(rule.rule, "_compiled_call_impl", None) is None
    train(a, opt_a, 3)
    train(b, opt_b, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="compile=True needs a learned rule"):
        LearnedOptimizer(mlp().parameters(), Adam(lr=1e-3), compile=True)
