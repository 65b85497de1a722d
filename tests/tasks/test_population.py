import pytest
import torch

from nfopt.lopt import SGD, Adam
from nfopt.tasks import Population, TaskFamily


@pytest.fixture(scope="module", params=["digits_mlp", "fashion_cnn", "teacher_student"])
def task(request):
    t = TaskFamily.load(request.param).sample(0)
    try:
        assert len(t.dataset.x_train) > 0
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST not installed")
    return t


def test_loss_and_grad_equal_separate_modules(task):
    pop = task.population(3, seed=1)
    d = task.dataset
    xb, yb = pop.sample_batch(d.x_train, d.y_train, 16, torch.Generator().manual_seed(0))
    assert xb.shape[:2] == (3, 16)
    loss, grads = pop.loss_and_grad(xb, yb)
    for k, m in enumerate(pop.to_modules()):
        ref = task.loss_fn(m(xb[k]), yb[k])
        ref.backward()
        assert torch.allclose(loss[k], ref, atol=1e-6)
        for name, p in m.named_parameters():
            assert torch.allclose(grads[name][k], p.grad, atol=1e-5), name


def test_evaluate_matches_modules(task):
    pop = task.population(2, seed=2)
    d = task.dataset.subset(200, 100)
    res = pop.evaluate(d.x_test, d.y_test, batch_size=32)
    for k, m in enumerate(pop.to_modules()):
        with torch.no_grad():
            out = m(d.x_test)
        assert torch.allclose(res["loss"][k], task.loss_fn(out, d.y_test), atol=1e-5)
        if task.loss == "cross_entropy":
            assert torch.isclose(res["accuracy"][k], (out.argmax(-1) == d.y_test).float().mean())


def test_features_are_views_and_round_trip():
    task = TaskFamily.load("digits_mlp").sample(0)
    pop = task.population(4)
    f = pop.features()
    assert f.batch_size == 4 and f.channels == 1 and f.spec == task.network_spec
    w0 = pop.params["1.weight"]
    assert f.weights[0].data_ptr() == w0.data_ptr()  # no copy
    back = pop.params_from_features(f * 2.0)
    assert torch.allclose(back["1.weight"], 2 * w0)
    with pytest.raises(ValueError, match="do not fit"):
        pop.params_from_features(f.cat([f, f]))


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_functional_optimizers_equal_torch_optim(opt_name):
    torch.manual_seed(0)
    task = TaskFamily.load("digits_mlp").sample(1)
    pop = task.population(3, seed=4)
    mods = pop.to_modules()
    if opt_name == "adam":
        opt, torch_opts = Adam(lr=1e-2), [torch.optim.Adam(m.parameters(), lr=1e-2) for m in mods]
    else:
        opt, torch_opts = (
            SGD(lr=1e-2, momentum=0.9),
            [torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9) for m in mods],
        )
    d = task.dataset
    gen = torch.Generator().manual_seed(0)
    params, state = pop.params, opt.init(pop.spec, len(pop))
    for _ in range(5):
        xb, yb = pop.sample_batch(d.x_train, d.y_train, 32, gen)
        loss, grads = pop.loss_and_grad(xb, yb, params)
        new, state = opt.update(None, state, pop.features(params), pop.features(grads), loss)
        params = pop.params_from_features(new)
        for k, (m, o) in enumerate(zip(mods, torch_opts)):
            o.zero_grad()
            task.loss_fn(m(xb[k]), yb[k]).backward()
            o.step()
    for k, m in enumerate(mods):
        for name, p in m.named_parameters():
            assert torch.allclose(params[name][k], p, atol=1e-5), name


def test_per_member_learning_rates_and_training_reduces_loss():
    task = TaskFamily.load("digits_mlp").sample(0)
    pop = task.population(2)
    opt = Adam(lr=torch.tensor([0.0, 1e-2]))
    d = task.dataset
    params, state = pop.params, opt.init(pop.spec, len(pop))
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        xb, yb = pop.sample_batch(d.x_train, d.y_train, 64, gen)
        loss, grads = pop.loss_and_grad(xb, yb, params)
        new, state = opt.update(None, state, pop.features(params), pop.features(grads), loss)
        params = pop.params_from_features(new)
    assert torch.equal(params["1.weight"][0], pop.params["1.weight"][0])  # lr 0: unchanged
    after = pop.replace(params).evaluate(d.x_test, d.y_test)
    before = pop.evaluate(d.x_test, d.y_test)
    assert after["loss"][1] < 0.7 * before["loss"][1]
    assert after["accuracy"][1] > 0.6


def test_population_validation():
    task = TaskFamily.load("digits_mlp").sample(0)
    pop = task.population(2)
    with pytest.raises(ValueError, match="loss='hinge'"):
        Population(task.build_model(), pop.params, loss="hinge")
    bad = dict(pop.params)
    bad["1.bias"] = bad["1.bias"][:1]
    with pytest.raises(ValueError, match="population size"):
        Population(task.build_model(), bad)


def test_mlp_fast_path_equals_vmap_path():
    task = TaskFamily.load("mnist1d_mlp").sample(2)
    pop = task.population(3, seed=5)
    d = task.dataset
    xb, yb = pop.sample_batch(d.x_train, d.y_train, 8, torch.Generator().manual_seed(1))
    assert pop.plan is not None
    fast = pop.loss_and_grad(xb, yb)
    pop.plan = None
    slow = pop.loss_and_grad(xb, yb)
    assert torch.allclose(fast[0], slow[0], atol=1e-6)
    for k in fast[1]:
        assert torch.allclose(fast[1][k], slow[1][k], atol=1e-6), k
