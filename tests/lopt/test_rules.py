import pytest
import torch

from nfopt import NetworkSpec, WeightSpaceFeatures
from nfopt.lopt import Adam, FeatureConfig, LearnedUpdateRule, build_features
from nfopt.testing import random_spec

# Test labels -> (meta-model kind, size); "nfn_np_pointwise" is the NFN with per-entry depth.
SMALL = {
    "mlp": ("mlp", {"hidden": 8}),
    "nfn_np": ("nfn_np", {"channels": 4}),
    "nfn_np_pointwise": ("nfn_np", {"channels": 4, "layers": 2, "pointwise": 2}),
    "nfn_hnp": ("nfn_hnp", {"channels": 4}),
    "nft": ("nft", {"channels": 4, "heads": 2}),
}
KINDS = list(SMALL)


def rule_of(label: str, **kw) -> LearnedUpdateRule:
    torch.manual_seed(0)
    kind, size = SMALL[label]
    return LearnedUpdateRule(kind, meta_model=size, **kw)


def inputs(spec: NetworkSpec, population: int = 2, seed: int = 0, scale: float = 1.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    params = WeightSpaceFeatures.randn(spec, population, 1, generator=g, dtype=dtype)
    grads = WeightSpaceFeatures.randn(spec, population, 1, generator=g, dtype=dtype) * scale
    return params, grads


def perturb_meta_model(rule: LearnedUpdateRule) -> None:
    """Give the zero-initialised head non-zero weights so the learned term is active."""
    with torch.no_grad():
        for p in rule.meta_model.parameters():
            p.add_(0.3 * torch.randn_like(p))


MLPLOPT = FeatureConfig(adam_direction=False, loss_features=False, fraction=False, tensor_features=False)


def test_features_match_the_mlp_lopt_inputs():
    cfg = MLPLOPT
    assert cfg.num_features == 19
    spec = NetworkSpec.mlp([5, 4, 3])
    params, grads = inputs(spec)
    mom = WeightSpaceFeatures.zeros(spec, 2, len(cfg.decays))
    f, glob = build_features(params, grads, mom, torch.tensor(7), cfg)
    assert f.channels + glob.shape[1] == 19 and glob.shape == (2, 11)
    w = f.weights[0]
    ms = w[:, :2].square().mean((2, 3))  # g and p are second-moment normalised per tensor
    assert torch.allclose(ms, torch.ones_like(ms), atol=1e-3)
    assert torch.allclose(glob[0], torch.tanh(7 / torch.tensor(cfg.timescales, dtype=w.dtype)))


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_rule_is_adam(kind):
    rule = rule_of(kind, step_mult=1e-3)
    spec = random_spec(3, conv=False)
    params, grads = inputs(spec, 3)
    state, astate = rule.init(spec, 3, dtype=torch.float64), Adam(lr=1e-3).init(spec, 3, dtype=torch.float64)
    rule = rule.double()
    for _ in range(3):
        new, state = rule.update(None, state, params, grads)
        ref, astate = Adam(lr=1e-3).update(None, astate, params, grads)
        assert new.allclose(ref, rtol=0, atol=1e-7)  # equal up to the soft bound B tanh(s/B) ~ s
        params, grads = new, grads * 0.5


@pytest.mark.parametrize("kind", KINDS)
def test_one_rule_updates_many_architectures_equivariantly(kind):
    rule = rule_of(kind).double()
    perturb_meta_model(rule)
    hidden_only = kind in ("nfn_hnp", "nft")
    specs = [NetworkSpec.mlp([8] + [w] * d + [3]) for d, w in ((0, 8), (1, 128), (2, 16), (3, 32), (4, 8))]
    specs.append(NetworkSpec(((6, 1, 3, 3), (5, 6, 3, 3), (4, 5))))  # a CNN
    for spec in specs:
        params, grads = inputs(spec, 2, seed=len(spec))
        state = rule.init(spec, 2, dtype=torch.float64, num_steps=50)
        loss = torch.tensor([2.0, 1.5], dtype=torch.float64)
        _, state = rule.update(None, state, params, grads, loss)  # a step in: momenta, loss EMAs set
        new, state2 = rule.update(None, state, params, grads * 0.7, loss * 0.9)
        assert new.spec == spec and state2["mom"].channels == 6
        perm = spec.sample_permutation(torch.Generator().manual_seed(1), hidden_only=hidden_only)
        st_p = {k: (v.permute(perm) if isinstance(v, WeightSpaceFeatures) else v) for k, v in state.items()}
        new_p, _ = rule.update(None, st_p, params.permute(perm), (grads * 0.7).permute(perm), loss * 0.9)
        assert new_p.allclose(new.permute(perm), atol=1e-10), spec
        assert not new.allclose(params)  # it did update


def test_updates_are_bounded_and_finite():
    rule = rule_of("nfn_np", bound=0.05)
    perturb_meta_model(rule)
    spec = NetworkSpec.mlp([6, 5, 2])
    params, grads = inputs(spec, 2, scale=1e6, dtype=torch.float32)
    grads = WeightSpaceFeatures([grads.weights[0].clone().fill_(float("nan")), grads.weights[1]], grads.biases)
    with torch.no_grad():
        rule.log_step_scale.fill_(20.0)  # an absurd learned step scale
    new, _ = rule.update(None, rule.init(spec, 2), params, grads)
    diff = max((a - b).abs().max().item() for a, b in zip(new.tensors(), params.tensors()))
    assert diff <= 0.05 + 1e-6
    assert all(torch.isfinite(t).all() for t in new.tensors())


@pytest.mark.parametrize("kind", KINDS)
def test_update_is_differentiable_in_theta_and_vmappable(kind):
    rule = rule_of(kind)
    perturb_meta_model(rule)
    spec = NetworkSpec.mlp([4, 3, 2])
    params, grads = inputs(spec, 2, dtype=torch.float32)
    theta = {k: v.detach() for k, v in rule.named_parameters()}
    state = rule.init(spec, 2)

    def after(th):
        new, _ = rule.update(th, state, params, grads)
        return sum(t.square().sum() for t in new.tensors())

    g = torch.func.grad(after)(theta)
    assert all(torch.isfinite(v).all() for v in g.values())
    assert g["log_step_scale"].abs() > 0
    # ES-style: a batch of perturbed thetas in one vmapped call
    eps = {k: 0.01 * torch.randn(3, *v.shape) for k, v in theta.items()}
    batched = torch.func.vmap(after)({k: theta[k] + eps[k] for k in theta})
    assert batched.shape == (3,)
    assert torch.allclose(batched[0], after({k: theta[k] + eps[k][0] for k in theta}), rtol=1e-4)


def test_config_round_trip_and_validation():
    rule = rule_of("nft")
    again = LearnedUpdateRule.from_config(rule.config())
    assert again.config() == rule.config()
    with pytest.raises(ValueError, match="kind='bad'"):
        LearnedUpdateRule("bad")
    with pytest.raises(ValueError, match="hand="):
        LearnedUpdateRule("mlp", hand="rmsprop")


def test_old_configs_rebuild_the_rule_they_were_saved_from():
    rule = rule_of("nfn_np", lr_head=False, features=MLPLOPT)
    cfg = rule.config()
    old = {k: v for k, v in cfg.items() if k not in ("lr_head", "lr_range")}
    old["features"] = {k: old["features"][k] for k in ("decays", "timescales", "eps")}  # the format before the flags
    again = LearnedUpdateRule.from_config(old)
    assert again.config() == cfg
    assert again.load_state_dict(rule.state_dict()) is not None  # same parameter shapes


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_rule_with_every_input_is_adam(kind):
    rule = rule_of(kind, step_mult=1e-3).double()
    assert rule.lr_head and rule.features.loss_features and rule.features.tensor_features
    spec = NetworkSpec(((6, 1, 3, 3), (5, 6, 3, 3), (4, 5)))
    params, grads = inputs(spec, 2)
    state = rule.init(spec, 2, dtype=torch.float64, num_steps=10)
    astate = Adam(lr=1e-3).init(spec, 2, dtype=torch.float64)
    loss = torch.tensor([2.0, 3.0], dtype=torch.float64)
    for _ in range(3):
        new, state = rule.update(None, state, params, grads, loss)
        ref, astate = Adam(lr=1e-3).update(None, astate, params, grads)
        assert new.allclose(ref, rtol=0, atol=1e-7)
        params, grads, loss = new, grads * 0.5, loss * 0.8


def test_loss_and_fraction_inputs_follow_the_trajectory():
    from nfopt.lopt.features import init_loss_state, loss_features, update_loss_state

    ls = init_loss_state(2, dtype=torch.float64)
    assert torch.equal(loss_features(ls), torch.zeros(2, 3, dtype=torch.float64))
    ls = update_loss_state(ls, torch.tensor([4.0, 1.0], dtype=torch.float64))
    assert torch.allclose(loss_features(ls), torch.zeros(2, 3, dtype=torch.float64))  # first loss: no trend
    for _ in range(30):
        ls = update_loss_state(ls, ls["loss_last"] * 0.9)  # falling losses
    f = loss_features(ls)
    assert (f[:, 0] < 0).all() and (f[:, 2] < 0).all()  # fast EMA below slow; below the first loss
    same = update_loss_state(ls, torch.tensor([float("nan"), float("inf")], dtype=torch.float64))
    assert torch.isfinite(loss_features(same)).all()
    assert update_loss_state(ls, None)["loss_last"] is ls["loss_last"]


def test_rule_reads_the_loss_and_the_horizon():
    rule = rule_of("nfn_np").double()
    perturb_meta_model(rule)
    spec = NetworkSpec.mlp([5, 4, 3])
    params, grads = inputs(spec, 2)

    def step(loss, num_steps):
        state = rule.init(spec, 2, dtype=torch.float64, num_steps=num_steps)
        for k in range(3):
            _, state = rule.update(None, state, params, grads, None if loss is None else loss * (0.9**k))
        return rule.update(None, state, params, grads, loss)[0]

    base = step(torch.tensor([1.0, 1.0], dtype=torch.float64), 100)
    assert not base.allclose(step(torch.tensor([1.0, 1.0], dtype=torch.float64), 5))  # horizon matters
    assert not base.allclose(step(torch.tensor([1.0, 1.0], dtype=torch.float64), None))  # unknown horizon
    assert not base.allclose(step(None, 100))  # the loss matters


def test_per_tensor_step_size_comes_from_the_lr_head():
    rule = rule_of("nfn_np", step_mult=1e-3).double()
    spec = NetworkSpec.mlp([5, 4, 3])
    params, grads = inputs(spec, 2)
    with torch.no_grad():  # only the lr output's bias: every tensor's log step becomes R tanh(1 / R)
        head = rule.meta_model.rest[-1]  # SharedNPLinear: biases (roles, outputs) for weights and biases
        head.beta[:, 2] = 1.0
        head.beta_b[:, 2] = 1.0
    state = rule.init(spec, 2, dtype=torch.float64)
    new, _ = rule.update(None, state, params, grads)
    ref, _ = Adam(lr=1e-3).update(None, Adam(lr=1e-3).init(spec, 2, dtype=torch.float64), params, grads)
    gain = float(torch.exp(3.0 * torch.tanh(torch.tensor(1.0 / 3.0))))
    for a, b, p in zip(new.tensors(), ref.tensors(), params.tensors()):
        assert torch.allclose(p - a, (p - b) * gain, rtol=1e-3, atol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_rule_with_a_schedule_is_adam(kind):
    rule = rule_of(kind, step_mult=1e-3, schedule_knots=5).double()
    spec = random_spec(3, conv=False)
    params, grads = inputs(spec, 2)
    state = rule.init(spec, 2, dtype=torch.float64, num_steps=4)
    astate = Adam(lr=1e-3).init(spec, 2, dtype=torch.float64)
    for _ in range(3):
        new, state = rule.update(None, state, params, grads)
        ref, astate = Adam(lr=1e-3).update(None, astate, params, grads)
        assert new.allclose(ref, rtol=0, atol=1e-7)
        params, grads = new, grads * 0.5


def test_schedule_interpolates_its_knots_over_the_training_fraction_around_a_zero_mean():
    rule = rule_of("mlp", schedule_knots=3).double()
    with torch.no_grad():
        rule.log_schedule.copy_(torch.tensor([0.0, -1.0, -3.0]))
    one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    fs = (0.0, 0.25, 0.5, 0.75, 1.0, 2.0)
    with torch.no_grad():
        got = [float(rule.schedule_value(torch.tensor(f, dtype=torch.float64), one)) for f in fs]
        unknown = float(rule.schedule_value(zero, zero))
    mean = (-0.5 - 2.0) / 2  # the interpolant's mean over [0, 1]
    assert got == pytest.approx([0.0 - mean, -0.5 - mean, -1.0 - mean, -2.0 - mean, -3.0 - mean, -3.0 - mean])
    assert unknown == 0.0  # unknown horizon: the rule's own step
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    with torch.no_grad():
        avg = torch.stack([rule.schedule_value(f, one) for f in grid]).mean()
    assert abs(float(avg)) < 1e-3  # it only redistributes the step over training


def test_schedule_scales_the_step_at_the_fraction_of_training_done():
    rule = rule_of("nfn_np", step_mult=1e-3, schedule_knots=2).double()
    spec = NetworkSpec.mlp([5, 4, 3])
    params, grads = inputs(spec, 2)

    def step(knots, num_steps, steps_done):
        with torch.no_grad():
            rule.log_schedule.copy_(torch.tensor(knots))
        state = rule.init(spec, 2, dtype=torch.float64, num_steps=num_steps)
        state["step"] = torch.tensor(steps_done)
        return [p - n for p, n in zip(params.tensors(), rule.update(None, state, params, grads)[0].tensors())]

    e = torch.exp(torch.tensor(1.0, dtype=torch.float64))
    # knots 0, -2: mean -1, so g = +1 at the start, 0 halfway, -1 at the end; 0 when the horizon is unknown
    for num_steps, done, gain in ((10, 0, e), (10, 5, 1.0), (10, 10, 1 / e), (None, 5, 1.0)):
        flat, sched = step([0.0, 0.0], num_steps, done), step([0.0, -2.0], num_steps, done)
        for a, b in zip(flat, sched):
            assert torch.allclose(b, a * gain, rtol=1e-3, atol=1e-12), (num_steps, done)


@pytest.mark.parametrize("kind", ["nfn_np", "nfn_np_pointwise", "nfn_hnp"])
def test_rule_with_a_schedule_is_equivariant(kind):
    rule = rule_of(kind, schedule_knots=4).double()
    perturb_meta_model(rule)
    with torch.no_grad():
        rule.log_schedule.copy_(torch.tensor([0.5, -0.2, -1.0, -2.0]))
    spec = NetworkSpec.mlp([5, 4, 6, 3])
    params, grads = inputs(spec, 2)
    state = rule.init(spec, 2, dtype=torch.float64, num_steps=7)
    perm = spec.sample_permutation(torch.Generator().manual_seed(3), hidden_only=kind == "nfn_hnp")
    new, _ = rule.update(None, state, params, grads)
    new_p, _ = rule.update(None, state, params.permute(perm), grads.permute(perm))
    assert new_p.allclose(new.permute(perm), atol=1e-10)


def test_schedule_config_round_trips_and_old_configs_have_none():
    rule = rule_of("nfn_np", schedule_knots=6)
    assert LearnedUpdateRule.from_config(rule.config()).config() == rule.config()
    old = {k: v for k, v in rule.config().items() if k != "schedule_knots"}
    assert LearnedUpdateRule.from_config(old).schedule_knots == 0
    with pytest.raises(ValueError, match="schedule_knots=1"):
        LearnedUpdateRule("mlp", schedule_knots=1)


@pytest.mark.parametrize("kind", ["mlp", "nfn_np"])
def test_untrained_width_exponent_changes_nothing(kind):
    spec = random_spec(3, conv=True)
    params, grads = inputs(spec, 2)
    plain, wide = rule_of(kind).double(), rule_of(kind, width_exponent=True).double()
    perturb_meta_model(plain)
    wide.load_state_dict({**plain.state_dict(), "width_alpha": torch.zeros((), dtype=torch.float64)})
    a, _ = plain.update(None, plain.init(spec, 2, dtype=torch.float64), params, grads)
    b, _ = wide.update(None, wide.init(spec, 2, dtype=torch.float64), params, grads)
    assert a.allclose(b, rtol=0, atol=0)


def test_width_exponent_scales_each_tensor_step_by_a_power_of_its_fan_in():
    rule = rule_of("nfn_np", step_mult=1e-4, width_exponent=True).double()  # small steps: tanh bound ~linear
    spec = NetworkSpec(((5, 3, 3, 3), (4, 5), (2, 4)))  # a 3x3 conv (fan-in 27), then linear layers
    params, grads = inputs(spec, 2)

    def steps(alpha):
        with torch.no_grad():
            rule.width_alpha.fill_(alpha)
        new, _ = rule.update(None, rule.init(spec, 2, dtype=torch.float64), params, grads)
        return params - new  # (P, 1, ...) steps, weights and biases

    flat, half = steps(0.0), steps(0.5)
    for i, fan in enumerate((27, 5, 4)):  # a layer's weight and bias share its fan-in (inputs x kernel)
        for a, b in ((flat.weights[i], half.weights[i]), (flat.biases[i], half.biases[i])):
            assert torch.allclose(b, a * (fan / 64) ** 0.5, rtol=1e-6, atol=1e-14), fan


@pytest.mark.parametrize("kind", ["nfn_np", "nfn_hnp"])
def test_rule_with_a_width_exponent_is_equivariant(kind):
    rule = rule_of(kind, width_exponent=True).double()
    perturb_meta_model(rule)
    with torch.no_grad():
        rule.width_alpha.fill_(-0.7)
    spec = NetworkSpec.mlp([5, 4, 6, 3])
    params, grads = inputs(spec, 2)
    state = rule.init(spec, 2, dtype=torch.float64)
    perm = spec.sample_permutation(torch.Generator().manual_seed(3), hidden_only=kind == "nfn_hnp")
    new, _ = rule.update(None, state, params, grads)
    new_p, _ = rule.update(None, state, params.permute(perm), grads.permute(perm))
    assert new_p.allclose(new.permute(perm), atol=1e-10)


def test_width_exponent_config_round_trips_and_old_configs_have_none():
    rule = rule_of("mlp", width_exponent=True)
    assert LearnedUpdateRule.from_config(rule.config()).config() == rule.config()
    old = {k: v for k, v in rule.config().items() if k != "width_exponent"}
    assert not LearnedUpdateRule.from_config(old).width_exponent
    assert "width_alpha" not in dict(LearnedUpdateRule.from_config(old).named_parameters())


RULE_VARIANTS = [
    {},
    {"hand": "momentum", "lr_head": False},
    {"hand": "none", "width_exponent": True, "schedule_knots": 3},
    {"features": FeatureConfig(adam_direction=False, tensor_features=False), "hand": "adam"},
    {"features": MLPLOPT, "hand": "momentum"},
]


@pytest.mark.parametrize("variant", range(len(RULE_VARIANTS)))
@pytest.mark.parametrize("kind", ["mlp", "nfn_np", "nft"])
def test_fused_cpu_kernels_compute_the_rule(kind, variant, monkeypatch):
    """Float32 inference takes the fused feature and step kernels (``nfopt.lopt.kernels``): the
    same parameters and state as the PyTorch path over several steps, on an MLP and a CNN, with
    non-finite gradients on the way, for every hand-designed direction and input switch."""
    from nfopt.lopt import kernels
    from nfopt.nn import _native

    if not _native.available():
        pytest.skip("no C++ compiler: the kernels are not built")
    rule = rule_of(kind, **RULE_VARIANTS[variant])
    perturb_meta_model(rule)
    with torch.no_grad():
        for name in ("log_step_scale", "log_hand_scale", "log_schedule", "width_alpha"):
            if hasattr(rule, name):
                getattr(rule, name).normal_(0.0, 0.3)
    calls = []
    for spec in (random_spec(4, conv=False), NetworkSpec(((6, 2, 3, 3), (5, 6, 3, 3), (4, 5)))):
        params, grads = inputs(spec, 3, dtype=torch.float32)
        states = [rule.init(spec, 3, num_steps=5) for _ in range(2)]
        ps = [params, params]
        for step in range(4):
            noise = WeightSpaceFeatures.randn(spec, 3, 1, generator=torch.Generator().manual_seed(step))
            g = grads * (0.5**step) + noise
            if step == 2:
                g.weights[0][1, 0].view(-1)[0] = float("nan")
                g.biases[-1][0, 0, 0] = float("inf")
            loss = torch.tensor([2.0, 1.0, float("nan")]) * (step + 1)
            for fused in (True, False):
                with torch.no_grad(), monkeypatch.context() as m:
                    if not fused:
                        m.setattr(kernels, "applies", lambda *t: False)
                    else:
                        m.setattr(kernels, "apply_step", _counted(kernels.apply_step, calls))
                    i = 1 - int(fused)
                    ps[i], states[i] = rule.update(None, states[i], ps[i], g, loss)
            for a, b in zip(ps[0].tensors(), ps[1].tensors()):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
            for key, value in states[0].items():
                other = states[1][key]
                wsf = isinstance(value, WeightSpaceFeatures)
                pairs = zip(value.tensors(), other.tensors()) if wsf else [(value, other)]
                for a, b in pairs:
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert calls  # the kernels ran


def _counted(fn, calls):
    def run(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return run


def test_non_finite_entries_are_zeroed_alike_traced_and_eager():
    """``_zero_nonfinite`` traced by ``torch.compile`` (``where(t - t == 0, t, 0)``, in inductor's
    vector loops and their scalar tail) zeroes NaN and ±inf exactly as ``nan_to_num`` does."""
    from nfopt.lopt.rules import _zero_nonfinite
    from nfopt.nn.compiled import compile_bound

    x = torch.tensor([1.5, float("nan"), float("inf"), -float("inf"), -0.0, 3.0, 1e38, -2.0, 0.25] * 3)  # 27
    traced = compile_bound(lambda t: _zero_nonfinite(t * 2), device="cpu")
    want = torch.nan_to_num(x * 2, nan=0.0, posinf=0.0, neginf=0.0)
    torch.testing.assert_close(traced(x), want, rtol=0, atol=0)
    torch.testing.assert_close(_zero_nonfinite(x * 2), want, rtol=0, atol=0)


def test_the_traced_tanh_is_within_a_few_ulps_of_tanh():
    """``_tanh`` traced by ``torch.compile`` for the CPU (a rational function): within 6 units
    in the last place of float32 of the exact ``tanh`` (float64) over the arguments that matter,
    tiny and saturating ones too; never past ±1; odd; ±inf to ±1 within a unit; NaN kept (zeroed later). Eager:
    ``torch.tanh`` itself."""
    from nfopt.lopt.rules import _tanh
    from nfopt.nn.compiled import compile_bound

    tiny = torch.logspace(-30, 1.2, 20_001)
    half = torch.cat([torch.linspace(0, 14, 100_001), tiny])
    x = torch.cat([half, -half])
    traced = compile_bound(_tanh, device="cpu")(x)
    exact = torch.tanh(x.double())
    ulp = torch.ldexp(torch.ones_like(exact), exact.frexp().exponent - 24)  # float32's unit at each result
    assert float(((traced.double() - exact).abs() / ulp).max()) <= 6
    assert traced.abs().max() <= 1 and torch.equal(traced[: len(half)], -traced[len(half) :])
    special = torch.tensor([0.0, float("inf"), -float("inf"), float("nan")])
    out = compile_bound(_tanh, device="cpu")(special)
    assert out[0] == 0 and out[1] == -out[2] and 1 - out[1] <= 6e-8 and out[3].isnan()
    torch.testing.assert_close(_tanh(x), torch.tanh(x), rtol=0, atol=0)


def test_constants_are_made_once_per_values_dtype_and_device_and_fresh_where_reuse_is_unsafe():
    from nfopt.lopt.features import constant

    a = constant((0.9, 0.99), torch.float32, "cpu")
    assert torch.equal(a, torch.tensor([0.9, 0.99])) and a.dtype == torch.float32
    assert constant((0.9, 0.99), torch.float32, torch.device("cpu")) is a  # one tensor, not one per step
    assert constant((0.9, 0.99), torch.float64, "cpu") is not a
    with torch.inference_mode():  # an inference tensor could not enter autograd later
        b = constant((0.9, 0.99), torch.float32, "cpu")
        assert b is not a and b.is_inference()
    x = torch.ones(2, requires_grad=True)
    (x * constant((0.9, 0.99), torch.float32, "cpu")).sum().backward()  # usable under autograd
    assert torch.allclose(x.grad, a)
