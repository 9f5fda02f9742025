"""NewtonCG, min_hessian_eigenvalue and sgd_newton against known minimisers and dense oracles."""

import equinox as eqx
import jax
import jax.numpy as jnp
import optimistix as optx
import pytest

import ot_matfree as om


def _stats(sol):
    return {k: int(v) for k, v in sol.stats.items()}


def _rosenbrock(y, args):
    return (1 - y[0]) ** 2 + 100 * (y[1] - y[0] ** 2) ** 2


def _quadratic_problem(key, size=6):
    k1, k2 = jax.random.split(key)
    m = jax.random.normal(k1, (size, size))
    q = m @ m.T + 0.5 * jnp.eye(size)
    b = jax.random.normal(k2, (size,))
    return q, b


def test_quadratic_exact_in_one_newton_step():
    q, b = _quadratic_problem(jax.random.PRNGKey(0))
    # Parameters as a pytree: the first two and the last four coordinates.
    fn = lambda p, args: 0.5 * jnp.concatenate(p) @ q @ jnp.concatenate(p) - b @ jnp.concatenate(p)
    y0 = (jnp.zeros(2), jnp.zeros(4))
    solver = om.NewtonCG(rtol=1e-10, atol=1e-10, forcing=1e-13)
    # Two evaluations: y0, then the accepted full Newton step.
    sol = optx.minimise(fn, solver, y0, max_steps=2, throw=False)
    assert sol.result == optx.RESULTS.nonlinear_max_steps_reached
    assert _stats(sol)["num_newton_steps"] == 2
    exact = jnp.linalg.solve(q, b)
    assert jnp.allclose(jnp.concatenate(sol.value), exact, rtol=1e-11, atol=1e-11)


def test_rosenbrock_from_standard_start_with_callbacks():
    calls, printed = [], []
    solver = om.NewtonCG(
        rtol=1e-10, atol=1e-10, progress=lambda info: calls.append(info),
        verbose=lambda **kw: jax.debug.callback(lambda v: printed.append(v), kw["loss"][1]),
    )
    sol = jax.jit(lambda y: optx.minimise(_rosenbrock, solver, y))(jnp.array([-1.2, 1.0]))
    assert jnp.allclose(sol.value, jnp.ones(2), rtol=0, atol=1e-8)
    stats = _stats(sol)
    assert stats["num_steps"] == stats["num_newton_steps"] + stats["num_search_steps"]
    assert stats["num_hvps"] >= stats["num_cg_steps"] >= 1
    assert len(calls) == len(printed) == stats["num_steps"]
    assert set(calls[-1]) == {"step", "loss", "grad_norm", "step_size", "num_newton_steps",
                              "num_hvps"}
    assert int(calls[-1]["num_hvps"]) == stats["num_hvps"]


def test_relaxed_newton_fixed_step():
    # Step 0.5 on a quadratic: the error halves exactly at every step.
    q, b = _quadratic_problem(jax.random.PRNGKey(1), size=3)
    fn = lambda y, args: 0.5 * y @ q @ y - b @ y
    exact = jnp.linalg.solve(q, b)
    solver = om.NewtonCG(rtol=1e-10, atol=1e-10, forcing=1e-13, search=optx.LearningRate(0.5))
    sol = optx.minimise(fn, solver, jnp.zeros(3), max_steps=5, throw=False)
    # 5 evaluations, 4 steps of 0.5 from y0 = 0: error = 2^-4 |exact|.
    assert jnp.allclose(sol.value, exact * (1 - 0.5**4), rtol=1e-10)


def test_matches_bfgs_with_fewer_steps():
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    a = jax.random.normal(k1, (12, 5))
    c = jax.random.normal(k2, (12,))
    fn = lambda y, args: jax.nn.logsumexp(a @ y + c) + 0.05 * y @ y
    y0 = jnp.ones(5)
    newton = optx.minimise(fn, om.NewtonCG(rtol=1e-12, atol=1e-12), y0)
    bfgs = optx.minimise(fn, optx.BFGS(rtol=1e-12, atol=1e-12), y0)
    assert jnp.allclose(newton.value, bfgs.value, rtol=0, atol=1e-8)
    assert jnp.linalg.norm(jax.grad(fn)(newton.value, None)) < 1e-10
    assert _stats(newton)["num_newton_steps"] < _stats(bfgs)["num_steps"]


@pytest.mark.parametrize("linearise", [True, False])
def test_negative_curvature_is_handled(linearise, capfd):
    # Saddle at the origin: the Hessian diag(3 x^2 - 1, 2) is indefinite at y0.
    fn = lambda y, args: y[0] ** 4 / 4 - y[0] ** 2 / 2 + y[1] ** 2
    solver = om.NewtonCG(rtol=1e-10, atol=1e-10, linearise=linearise, verbose=True)
    sol = optx.minimise(fn, solver, jnp.array([0.1, 1.0]))
    assert jnp.allclose(sol.value, jnp.array([1.0, 0.0]), atol=1e-8)
    assert _stats(sol)["num_negative_curvature"] >= 1
    assert capfd.readouterr().out.count("Loss on this step") == _stats(sol)["num_steps"]


def test_throw_and_result_codes():
    solver = om.NewtonCG(rtol=1e-10, atol=1e-10)
    y0 = jnp.array([-1.2, 1.0])
    with pytest.raises(eqx.EquinoxRuntimeError, match="maximum number of steps"):
        optx.minimise(_rosenbrock, solver, y0, max_steps=3)
    sol = optx.minimise(_rosenbrock, solver, y0, max_steps=3, throw=False)
    assert sol.result == optx.RESULTS.nonlinear_max_steps_reached
    # Under jit, too.
    hit_max = jax.jit(
        lambda y: optx.minimise(_rosenbrock, solver, y, max_steps=3, throw=False).result
        == optx.RESULTS.nonlinear_max_steps_reached
    )(y0)
    assert bool(hit_max)
    with pytest.raises(Exception, match="maximum number of steps"):
        jax.jit(lambda y: optx.minimise(_rosenbrock, solver, y, max_steps=3).value)(y0)
    # A non-finite gradient is a divergence, never a converged answer.
    nan_fn = lambda y, args: jnp.sum(jnp.sqrt(y - 2.0))
    sol = optx.minimise(nan_fn, solver, jnp.ones(2), throw=False)
    assert sol.result == optx.RESULTS.nonlinear_divergence
    with pytest.raises(eqx.EquinoxRuntimeError):
        optx.minimise(nan_fn, solver, jnp.ones(2))



def test_vmap_over_problems():
    q, _ = _quadratic_problem(jax.random.PRNGKey(3), size=4)
    bs = jax.random.normal(jax.random.PRNGKey(4), (3, 4))
    solver = om.NewtonCG(rtol=1e-10, atol=1e-10)
    solve = lambda b: optx.minimise(lambda y, b: 0.5 * y @ q @ y - b @ y, solver, jnp.zeros(4), b)
    values = jax.vmap(lambda b: solve(b).value)(bs)
    assert jnp.allclose(values, jnp.linalg.solve(q, bs.T).T, rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(forcing=1.5), ValueError),
        (dict(forcing="newton"), ValueError),
        (dict(cg_max_steps=0), ValueError),
        (dict(verbose="yes"), ValueError),
        (dict(progress=3), TypeError),
    ],
)
def test_bad_options(kwargs, error):
    with pytest.raises(error):
        om.NewtonCG(rtol=1e-6, atol=1e-6, **kwargs)


def test_bad_tolerances():
    with pytest.raises(ValueError, match="rtol"):
        om.NewtonCG(rtol=0.0, atol=0.0)


# --- OT losses ----------------------------------------------------------------


def _registration(n=30, seed=0):
    """Zero-noise registration: Y = X A_true, rows shuffled."""
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    x = jax.random.normal(k1, (n, 3))
    rotation, _ = jnp.linalg.qr(jax.random.normal(k2, (3, 3)))
    a_true = rotation @ jnp.diag(jnp.array([1.5, 0.8, 1.2]))
    y = (x @ a_true)[jax.random.permutation(k3, n)]
    return x, y, a_true


@pytest.mark.slow  # 15 s; README block 3 runs NewtonCG to the true linear map in CI
def test_registration_recovers_rotation_and_scale():
    # The Sinkhorn divergence vanishes only when the clouds are equal, so its
    # minimiser is A_true exactly (ot_cost's is biased by the entropy).
    x, y, a_true = _registration()
    starts = []
    solver = om.Sinkhorn(tol=1e-12, progress=lambda it, err: starts.append(int(it) == 1),
                         progress_every=1)
    loss = lambda a, y: om.sinkhorn_divergence(x @ a, y, epsilon=2.0, solver=solver)
    a0 = a_true + 0.2 * jax.random.normal(jax.random.PRNGKey(7), (3, 3))
    sol = optx.minimise(loss, om.NewtonCG(rtol=1e-10, atol=1e-10), a0, y)
    assert jnp.max(jnp.abs(sol.value - a_true)) < 1e-6
    # Recover rotation and scale: A = R diag(s), R orthogonal.
    scale = jnp.linalg.norm(sol.value, axis=0)
    assert jnp.allclose(scale, jnp.array([1.5, 0.8, 1.2]), atol=1e-6)
    rotation = sol.value / scale
    assert jnp.allclose(rotation.T @ rotation, jnp.eye(3), atol=1e-6)
    # One set of Sinkhorn solves (3 OT terms) per evaluation, none per HVP.
    stats = _stats(sol)
    assert sum(starts) == 3 * stats["num_steps"]
    assert stats["num_hvps"] > stats["num_steps"]


# The L-BFGS case (24 s) runs with --runslow only: the warm start reaches NewtonCG's
# loss the same way for both solvers, and L-BFGS's own warm starts through the
# losses are tested in test_forward_lbfgs.py.
@pytest.mark.parametrize("kind", [om.Sinkhorn, pytest.param(om.LBFGS, marks=pytest.mark.slow)])
def test_warm_start_saves_iterations_not_accuracy(kind):
    # Each forward solve starts from the last accepted point's potentials:
    # the same minimiser and the same steps, fewer iterations (Sinkhorn's or
    # L-BFGS's). (Cold, the last trial point ends a run of Armijo rejections
    # at rounding level: NewtonCG stops once backtracking falls below its
    # tolerances.)
    loss, tol = om.ot_cost, 1e-10
    x, y, a_true = _registration(n=16)
    iterations = []
    solver = kind(tol=1e-12, progress=lambda it, err: iterations.append(1), progress_every=1)

    def fn(a, args):
        y, init = args
        return loss(x @ a, y, epsilon=2.0, solver=solver, init=init, return_potentials=True)

    a0 = a_true + 0.1 * jax.random.normal(jax.random.PRNGKey(3), (3, 3))
    zeros = (jnp.zeros(16), jnp.zeros(16))
    runs = {}
    for name, warm in [("cold", None), ("warm", lambda args, pots: (args[0], pots))]:
        iterations.clear()
        newton = om.NewtonCG(rtol=tol, atol=tol, warm_start=warm)
        sol = optx.minimise(fn, newton, a0, (y, zeros), has_aux=True, max_steps=40)
        runs[name] = sol, len(iterations)
    (cold, cold_iters), (warm, warm_iters) = runs["cold"], runs["warm"]
    assert jnp.max(jnp.abs(warm.value - cold.value)) < 100 * tol
    # Potentials equal to 1e-12 may end the search one step apart.
    assert abs(int(_stats(warm)["num_steps"]) - int(_stats(cold)["num_steps"])) <= 1
    assert warm_iters < 0.9 * cold_iters, (warm_iters, cold_iters)  # 215 vs 259
    # The returned aux is the final point's potentials (up to the gauge f + c, g - c).
    coupling = om.solve(x @ warm.value, y, epsilon=2.0, solver=om.Sinkhorn(tol=1e-12))
    assert jnp.std(warm.aux[0] - coupling.f) < 1e-9 and jnp.std(warm.aux[1] - coupling.g) < 1e-9


def test_warm_start_option_must_be_callable():
    with pytest.raises(TypeError, match="warm_start"):
        om.NewtonCG(rtol=1e-6, atol=1e-6, warm_start=3)


def test_loss_failure_inside_newton_raises():
    # A Sinkhorn solve that stops at max_iters raises through the minimiser.
    x, y, a_true = _registration(n=12)
    loss = lambda a, y: om.ot_cost(x @ a, y, epsilon=0.01, solver=om.Sinkhorn(max_iters=2))
    with pytest.raises(eqx.EquinoxRuntimeError, match="Sinkhorn did not reach"):
        optx.minimise(loss, om.NewtonCG(rtol=1e-8, atol=1e-8), a_true + 0.3, y)


def test_linearisation_keeps_no_n_by_m_residuals():
    x, y, _ = _registration(n=64)
    y = y[:48]
    fn = lambda a: om.ot_cost(x @ a, y, epsilon=2.0, block_size=16)
    # Shapes only (traced, not run): the residuals the linear map closes over.
    residuals = jax.eval_shape(lambda a: jax.tree.leaves(jax.linearize(jax.grad(fn), a)[1]),
                               jnp.eye(3))
    assert max(leaf.size for leaf in residuals) < 64 * 48 // 4


# --- Lanczos and the two-stage driver -------------------------------------------


def test_min_hessian_eigenvalue_matches_dense():
    m = jax.random.normal(jax.random.PRNGKey(5), (7, 7))
    q = 0.5 * (m + m.T)
    fn = lambda p: 0.5 * p["w"].ravel() @ q @ p["w"].ravel()
    params = {"w": jnp.ones((7, 1))}
    lam = om.min_hessian_eigenvalue(fn, params, key=jax.random.PRNGKey(0), num_steps=7)
    assert jnp.allclose(lam, jnp.linalg.eigvalsh(q)[0], rtol=1e-10)
    # Isotropic Hessian: the Krylov space is invariant after one step.
    lam = om.min_hessian_eigenvalue(lambda p: 1.5 * jnp.sum(p ** 2), jnp.ones(5),
                                    key=jax.random.PRNGKey(0), num_steps=5)
    assert jnp.allclose(lam, 3.0, rtol=1e-12)
    with pytest.raises(ValueError, match="num_steps"):
        om.min_hessian_eigenvalue(fn, params, key=jax.random.PRNGKey(0), num_steps=0)


def test_sgd_newton_leaves_indefinite_region():
    # Phase retrieval: f(w) = mean_i ((w . z_i)^2 - t_i)^2 / 4 with
    # t_i = (w_true . z_i)^2; the Hessian at w ~ 0 is negative definite.
    z = jax.random.normal(jax.random.PRNGKey(6), (64, 3))
    w_true = jnp.array([1.0, -0.5, 0.8])
    t = (z @ w_true) ** 2
    fn = lambda w, batch, args: jnp.mean(((batch[0] @ w) ** 2 - batch[1]) ** 2) / 4
    w0 = jnp.array([0.05, 0.05, 0.05])
    assert om.min_hessian_eigenvalue(lambda w: fn(w, (z, t), None), w0,
                                     key=jax.random.PRNGKey(0), num_steps=3) < 0
    sol = om.sgd_newton(fn, w0, (z, t), key=jax.random.PRNGKey(1), batch_size=16,
                        learning_rate=0.05, max_sgd_steps=500, lanczos_steps=3)
    stats = sol.stats
    assert bool(stats["positive_definite"]) and float(stats["min_eigenvalue"]) > 0
    assert 1 <= int(stats["num_sgd_steps"]) < 500
    sign = jnp.sign(sol.value @ w_true)
    assert jnp.allclose(sign * sol.value, w_true, atol=1e-7)


def test_sgd_newton_bad_input():
    fn = lambda w, batch, args: jnp.sum(batch @ w)
    z = jnp.ones((8, 2))
    with pytest.raises(ValueError, match="batch_size"):
        om.sgd_newton(fn, jnp.zeros(2), z, key=jax.random.PRNGKey(0), batch_size=9,
                      learning_rate=0.1, max_sgd_steps=1)
    with pytest.raises(ValueError, match="leading"):
        om.sgd_newton(fn, jnp.zeros(2), (z, jnp.ones(3)), key=jax.random.PRNGKey(0),
                      batch_size=2, learning_rate=0.1, max_sgd_steps=1)
    with pytest.raises(TypeError, match="NewtonCG"):
        om.sgd_newton(fn, jnp.zeros(2), z, key=jax.random.PRNGKey(0), batch_size=2,
                      learning_rate=0.1, max_sgd_steps=1, newton=optx.BFGS(1e-6, 1e-6))
