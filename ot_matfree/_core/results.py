"""Status codes: `ot_matfree.RESULTS` extends lineax's `RESULTS`.

Every iterative computation reports one of these (`Coupling.result`,
`stats["result"]`, `Spectrum.result`). With `throw=True` (the default) a
status other than `successful` raises, with the message below, eagerly and
under `jit`; with `throw=False` it is returned for the caller to check.
Lineax's own codes (`max_steps_reached`, `breakdown`, ...) are inherited, so
the H-solvers' statuses pass through `lineax.linear_solve` unchanged.
"""

import lineax as lx


class RESULTS(lx.RESULTS):  # pyright: ignore
    """Status of a solve. `RESULTS[result]` is the message; `result == RESULTS.successful`."""

    successful = ""
    sinkhorn_max_iters_reached = (
        "ot_matfree: Sinkhorn did not reach `solver.tol` within `solver.max_iters`. Raise "
        "`max_iters`, loosen `tol`, increase `epsilon`, or pass `throw=False` and check "
        "`coupling.converged` / `coupling.result` yourself."
    )
    sinkhorn_precision_floor = (
        "ot_matfree: Sinkhorn's own error estimate reached `solver.tol`, but the marginals "
        "summed directly do not, also after iterating on to a lower target: `tol` is below "
        "what this dtype resolves for this problem (about its unit roundoff times "
        "(|f| + |g| + |C|) / epsilon per unit of mass; float32 only). Loosen `tol`, "
        "increase `epsilon`, solve in float64, or pass `throw=False` and check "
        "`coupling.marginal_error` yourself."
    )
    sinkhorn_nonfinite = (
        "ot_matfree: Sinkhorn (or L-BFGS) produced non-finite potentials (a NaN marginal "
        "error), so it stopped at once. Check the cost for NaN or overflow at the given points "
        "(e.g. a norm or an angle at a zero vector, squared distances beyond the dtype's "
        "range) and `init` (potentials so large that their differences overflow)."
    )
    lbfgs_max_iters_reached = (
        "ot_matfree: L-BFGS did not reach `solver.tol` within `solver.max_iters`. Raise "
        "`max_iters`, loosen `tol`, use `Sinkhorn()`, or pass `throw=False` and check "
        "`coupling.result` yourself."
    )
    lbfgs_line_search_failed = (
        "ot_matfree: L-BFGS's line search found no step that decreases the objective or the "
        "marginal error: `solver.tol` is below what the dtype resolves for this problem (see "
        "the `tol` entry of `Sinkhorn`), or the problem is badly scaled. Loosen `tol`, use "
        "float64, or pass `throw=False` and check `coupling.result`."
    )
    lbfgs_precision_floor = (
        "ot_matfree: L-BFGS's own error estimate reached `solver.tol`, but the marginals "
        "summed directly do not, also after iterating on to a lower target: `tol` is below "
        "what this dtype resolves for this problem (float32 only). Loosen `tol`, increase "
        "`epsilon`, solve in float64, or pass `throw=False` and check "
        "`coupling.marginal_error` yourself."
    )
    coupling_not_converged = (
        "ot_matfree: the coupling passed in did not converge (its Sinkhorn solve stopped at "
        "`max_iters`), so its derivatives are not those of the OT problem. Solve it to "
        "tolerance first, or pass `throw=False` to differentiate the coupling as it is."
    )
    linear_solve_failed = (
        "ot_matfree: the H-matrix solve of a derivative did not reach its tolerance. Raise "
        "`linear_solver.max_steps`, loosen its `rtol`, use `SpectralCG` / `TruncatedSVD` for "
        "an ill-conditioned coupling (see `ot_matfree.spectrum`), increase `epsilon`, or pass "
        "`throw=False` and check `stats['result']`."
    )
    nonfinite_derivative = (
        "ot_matfree: a derivative is not finite although the inputs are: the cost must be "
        "twice differentiable wherever the coupling has mass (e.g. `|x - y|` is not, at "
        "coincident points; use `|x - y|^2` or a smoothed norm)."
    )
    nonfinite_spectrum = (
        "ot_matfree: the block Lanczos spectrum of the coupling has non-finite values."
    )
