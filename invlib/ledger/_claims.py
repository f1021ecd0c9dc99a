"""The post's checkable statements, in the order it makes them: quote, evidence, rule, section."""

from __future__ import annotations

from ._claim import Claim
from ._evidence_algorithm import (accumulation_orders, accumulation_retraction, adjoint_memory, adjoint_width,
                                  analogy, invertible_network, pseudocode, same_accumulation)
from ._evidence_costs import (ROUNDING, SCRATCH_DEPTH, arithmetic, batch_linear, conv_flops, conv_next,
                              dominates, double_compute, flop_backward, flop_forward, flop_inversion,
                              inverse_cost, larger_batch, linear_compute, lu, memory_constant, param_jacobian,
                              quadratic, revnet, with_scratch)
from ._rule import rule, when

YES = 1.0   # a yes/no fact of the evidence, compared exactly

MEMORY_RULE = rule(("confirmed", [when("error", "<", ROUNDING)]), otherwise="corrected")
MEMORY_WORDS = ("confirmed if the post's figure is within 5 % of the cache-to-weights ratio A/P under the "
                "post's own accounting (weights only, one output per layer), the most two significant "
                "digits can round; corrected otherwise")
SCRATCH_RULE = rule(("refuted", [when("of_post", "<=", 0)]), ("confirmed", [when("of_post", ">=", 0.5)]),
                    otherwise="corrected")
SCRATCH_WORDS = (f"what inversion saves at depth {SCRATCH_DEPTH}, batch 1: the cache autograd keeps minus the "
                 "inverse's scratch, as a fraction of the post's figure; refuted if it is not positive, "
                 "confirmed if at least half, corrected in between")


def claims() -> tuple[Claim, ...]:
    """Every checkable statement of the post, in the order it makes them."""
    return (
        Claim("adjoint-memory", "Neural ODEs train in memory constant in depth by the adjoint method",
              "constant memory scaling as a function of network depth",
              adjoint_memory,
              rule(("confirmed", [when("adjoint", "<", 1.25), when("backprop", ">", 2)]), otherwise="refuted"),
              "confirmed if the adjoint's peak grows by less than a quarter from 4 to 16 steps while "
              "backprop's through the solver more than doubles", "{ref}`adjoint-memory`"),
        Claim("adjoint-width", "The adjoint method needs a constant width",
              "the width of the network must remain constant",
              adjoint_width, rule(("confirmed", [when("refused", "==", YES)]), otherwise="refuted"),
              "confirmed if a width-changing vector field is refused", "{ref}`adjoint-equations`"),
        Claim("accumulation-orders", "With equal widths every order of accumulating the (full) Jacobian "
              "costs the same, and forward accumulation needs constant memory",
              "all jacobian accumulations require the same number of FLOPs ... constant memory without "
              "needing to make computational tradeoffs",
              accumulation_orders,
              rule(("confirmed", [when("same_flops", "==", YES), when("fwd_growth", "==", 0)]), otherwise="refuted"),
              "the sentence is about the Jacobian of a chain of square maps: confirmed if forward and "
              "reverse accumulation of that full Jacobian count the same FLOPs and forward's memory does "
              "not grow with depth (the scalar gradient is the next row)",
              "{ref}`algorithm-accumulation`"),
        Claim("accumulation-retraction", "The retraction: for a scalar gradient no accumulation order "
              "scales memory better at backprop's cost",
              "does not enable better scaling of memory through different Jacobian accumulations",
              accumulation_retraction,
              rule(("confirmed", [when("rev_growth", ">", 0), when("fwd_growth", "==", 0),
                                  when("flop_ratio", ">", 1.5)]), otherwise="refuted"),
              "confirmed if reverse mode's memory grows with depth while forward mode's, flat, costs more "
              "than 1.5x the FLOPs", "{ref}`algorithm-accumulation`"),
        Claim("invertible-network", "An invertible activation makes a fixed-width network invertible",
              "using an invertible activation makes the entire network invertible",
              invertible_network,
              rule(("corrected", [when("singular_refused", "==", YES), when("relu_refused", "==", YES)]),
                   otherwise="confirmed"),
              "corrected if a network with an invertible activation and a singular weight has no inverse",
              "{ref}`algorithm-setting`",
              pending="{doc}`stability` measures how far from singular the weights and activations must stay, in float32, "
                      "during training"),
        Claim("memory-constant", "Memory constant in depth (above parameters and gradients)",
              "scale memory as a constant instead of a linear factor of network depth",
              memory_constant,
              rule(("confirmed", [when("invertible_growth", "<", 0.01), when("plain_growth", ">", 1)]),
                   otherwise="refuted"),
              "confirmed if a training step's peak above parameters and gradients moves by less than 0.01 "
              "activations from depth 2 to 8 with inversion while plain autograd's grows by more than one; "
              "parameters, gradients and optimizer state grow with depth either way", "{ref}`blocks-memory`",
              pending="{doc}`training` measures the step memory of a real training run against depth, and "
                      "what weights, gradients and Adam's state add per block"),
        Claim("linear-compute", "Compute stays linear in depth", "retaining linear computational complexity",
              linear_compute, rule(("confirmed", [when("ratio", "==", 2)]), otherwise="refuted"),
              "confirmed if doubling the depth doubles the counted FLOPs exactly", "{ref}`blocks-coupling-flops`"),
        Claim("double-compute", "About twice backprop's compute",
              "roughly double the compute of backpropagation",
              double_compute,
              rule(("confirmed", [when("dense_at_width", ">=", 1.75), when("dense_at_one", "<=", 2.25)]),
                   otherwise="corrected"),
              "judged on the post's own algorithm (dense layers, one LU solve each), weight gradients "
              "counted as in training: confirmed if it costs 1.75-2.25x backprop's FLOPs both at batch 1 "
              "and at batch w (widths 64 and 256); corrected otherwise",
              "{ref}`compute-double`",
              pending="{doc}`compute` shows: measured step-time ratios (coupling, dense/LU, conv) against the FLOP ratio"),
        Claim("pseudocode", "The pseudo-code computes the gradient",
              "aFi = inv(fs[i])(x) ... dFi = dfs[i](aFi) * dFi",
              pseudocode,
              rule(("corrected", [when("literal_error", ">", 1e-3), when("fixed_error", "<", 1e-9)]),
                   otherwise="confirmed"),
              "corrected if the listing as printed misses the gradient and the two-line fix matches finite "
              "differences to 1e-9", "{ref}`algorithm-pseudocode`"),
        Claim("same-accumulation", "Backprop by inversion runs backprop's Jacobian products",
              "this performs the same jacobian accumulation as backpropagation",
              same_accumulation,
              rule(("confirmed", [when("same_flops", "==", YES), when("same_gradient", "==", YES)]),
                   otherwise="refuted"),
              "confirmed if the forward and VJP FLOP counts and the input gradient are identical",
              "{ref}`algorithm-same-flops`",
              pending="{doc}`stability` measures the products at rebuilt points, equal only up to the rebuild's "
                      "error, and that error in float32 and float64"),
        Claim("quadratic", "The cache is small against the weights by a quadratic factor",
              "a quadratic factor of the parameter count",
              quadratic,
              rule(("confirmed", [when("exponent", ">", 0.4), when("exponent", "<", 0.6)]), otherwise="refuted"),
              "judged on what the sentence means (the weights grow as the square of the cache): confirmed "
              "if the one-sample cache grows as P^e with e between 0.4 and 0.6; the wording is flagged in "
              "the finding", "{doc}`envelope`"),
        Claim("mem-dense-64", "Dense, width 64: dropping the cache saves 1.6%",
              "width 64 has 4096 parameters ... 1.6% memory savings",
              arithmetic(0), MEMORY_RULE, MEMORY_WORDS, "{doc}`envelope`"),
        Claim("mem-dense-256", "Dense, width 256: 0.4%", "reduced to 0.4% when we consider layers with width 256",
              arithmetic(1), MEMORY_RULE, "as for width 64", "{doc}`envelope`"),
        Claim("mem-conv1d", "Conv1d, 8x64x64 kernel on 256x64: a 50% larger model",
              "train a 50% larger model", arithmetic(2), MEMORY_RULE, "as for width 64", "{doc}`envelope`"),
        Claim("mem-conv2d", "Conv2d, 8x8x64x64 kernels on 256x256x64: a 1700% larger model",
              "models that are 1700% larger", arithmetic(3), MEMORY_RULE, "as for width 64", "{doc}`envelope`"),
        Claim("scratch-dense-64", "The 1.6%, with the inverse's own scratch", "1.6% memory savings",
              with_scratch(0), SCRATCH_RULE, SCRATCH_WORDS, "{ref}`envelope-scratch`"),
        Claim("scratch-dense-256", "The 0.4%, with scratch", "reduced to 0.4%", with_scratch(1),
              SCRATCH_RULE, "as above", "{ref}`envelope-scratch`"),
        Claim("scratch-conv1d", "The 50%, with scratch", "a 50% larger model", with_scratch(2),
              SCRATCH_RULE, "as above", "{ref}`envelope-scratch`"),
        Claim("scratch-conv2d", "The 1700%, with scratch", "1700% larger", with_scratch(3),
              SCRATCH_RULE, "as above", "{ref}`envelope-scratch`"),
        Claim("batch-linear", "The saving grows linearly with the batch",
              "this improvement scales linearly with batch sizes",
              batch_linear, rule(("confirmed", [when("ratio", "==", 8)]), otherwise="refuted"),
              "confirmed if eight times the batch gives exactly eight times the cache per weight",
              "{doc}`envelope`"),
        Claim("larger-batch", "Larger batches without gradient accumulation",
              "larger batch sizes without the need for gradient accumulation",
              larger_batch, rule(("confirmed", [when("ratio", ">", 1.5)]), otherwise="refuted"),
              "confirmed if inversion's batch-sized peak is more than 1.5x smaller than plain autograd's",
              "{doc}`measured`",
              pending="{ref}`post-budget` finds the largest batch within a memory budget per method and measures the step at that size"),
        Claim("inverse-cost", "Inverting a layer costs about a forward pass; both are cubic",
              "a cost comparable (though slightly higher) to the forward pass ... Both are cubic",
              inverse_cost,
              rule(("corrected", [when("at_one", ">", 10), when("at_width", "<", 1)]), otherwise="confirmed"),
              "corrected if the LU costs more than 10x the one-sample forward pass (quadratic) and is "
              "comparable only at a batch as large as the width", "{doc}`envelope`",
              pending="{doc}`compute` shows: measured time of an LU factorisation against a forward pass"),
        Claim("flop-1", "FLOP item (1): $2w^3d$ for the forward pass",
              "FLOPS for matrix multiplication in the forwards pass",
              flop_forward,
              rule(("corrected", [when("model_is_counted", "==", YES), when("post_over_width", "==", 1)]),
                   otherwise="confirmed"),
              "corrected if the counted one-sample FLOPs are exactly the post's count divided by w (the post's "
              "count holds for a batch of w)", "{doc}`envelope`",
              pending="{doc}`compute` shows: forward FLOPs counted at batch 1 and at batch w"),
        Claim("flop-2", "FLOP item (2): $2w^4d^3$ for the backward pass",
              "FLOPS for the backwards jacobiaan accumulations",
              flop_backward,
              rule(("refuted", [when("backward_over_forward", "==", 2), when("post_over_counted", ">", 100)]),
                   otherwise="open"),
              "refuted if the counted backward is exactly 2x the forward and the post's count more than "
              "100x it", "{doc}`envelope`",
              pending="{doc}`compute` shows: counted backward FLOPs against 2w^4d^3 as w and d grow"),
        Claim("flop-3", "FLOP item (3): $\\frac83 n^3 d$ to invert, $2w^3d$ to apply",
              "FLOPS for matrix inversions with an additional",
              flop_inversion, rule(("corrected", [when("inversion_over_lu", "==", 4)]), otherwise="confirmed"),
              "corrected if solving with the LU factors needs exactly a quarter of the post's inversion count",
              "{doc}`envelope`",
              pending="{doc}`compute` shows: LU factorisation and triangular solves timed against (8/3)n^3 d + 2w^3 d"),
        Claim("flop-dominates", "(2) dominates, so inversion's overhead vanishes for large models",
              "(2) comes to dominate the FLOP cost ... becomes neglegable for very large models",
              dominates,
              rule(("refuted", [when("min_overhead", ">=", 0.2)]), ("confirmed", [when("min_overhead", "<", 0.05)]),
                   otherwise="corrected"),
              "refuted if inversion adds at least a fifth of a training step at every size (dense and "
              "coupling); confirmed if less than 5 % somewhere; corrected in between", "{doc}`envelope`",
              pending="{doc}`compute` shows: measured overhead against model size"),
        Claim("lu", "Solving with an LU factorisation instead of inverting helps slightly",
              "can likely be optimized slightly ... using LU decomposition",
              lu, rule(("corrected", [when("item3_saving", ">=", 4 / 3)]), otherwise="confirmed"),
              "judged on the post's item (3) at its batch of w, applying included: confirmed (slightly) if LU "
              "removes less than a quarter of its FLOPs (a factor below 4/3); corrected if more",
              "{ref}`blocks-lu`", pending="{doc}`compute` shows: measured time of explicit inverse against LU solve"),
        Claim("param-jacobian", "Item (2) might be optimised because each layer uses few of the parameters",
              "most of our model parameters are not used directly in any given layer",
              param_jacobian, rule(("confirmed", [when("param_share", "==", 1)]), otherwise="open"),
              "confirmed if all weight gradients together cost exactly one forward pass: reverse mode "
              "already exploits it", "{doc}`envelope`"),
        Claim("conv-flops", "For convolutions the same calculation is similar, inversion less dominant",
              "would be similar but smaller",
              conv_flops, rule(("confirmed", [when("conv_over_dense", "<", 1)]), otherwise="open"),
              "confirmed if the estimated inversion overhead of the post's conv1d, relative to its step, is "
              "below the dense layer's at batch 1 and 64; open otherwise", "{ref}`blocks-conv`",
              pending="{doc}`compute` shows: counted and timed inverse of CircularConv1d/2d against a training step"),
        Claim("conv-next", "Next: inverting convolutional models, where memory savings are greatest",
              "inverting convolutional models where we expect to see the greatest memory savings",
              conv_next,
              rule(("confirmed", [when("conv2d_largest", "==", YES), when("revnet_share", "<", 0.5),
                                  when("irevnet_growth", "<", 1)]),
                   otherwise="open"),
              "confirmed if conv2d has the largest A/P, a RevNet-110 keeps less than half of ResNet-110's "
              "activations, and the fully invertible model's kept memory grows by less than one input "
              "batch from 3 to 18 couplings per stage", "{doc}`images`"),
        Claim("adjoint-analogy", "Backprop by inversion is the discrete analogue of the adjoint method",
              "Comparison to Adjoint Differentiation of ODEs (WIP)",
              analogy,
              rule(("corrected", [when("adjoint_error", ">", 1e-6), when("inversion_error", "<", 1e-12)]),
                   otherwise="confirmed"),
              "corrected if memory behaves alike but the adjoint's gradient misses the discrete one (> 1e-6) "
              "while inversion's matches it (< 1e-12)", "{ref}`adjoint-gradient`"),
        Claim("revnet", "The May 2024 update: RevNet already did this",
              "most of these ideas are reflected already in",
              revnet, rule(("confirmed", [when("off_four_thirds", "<", 0.01), when("growth", "<", 0.01),
                                          when("transformer_growth", "<", 0.5)]),
                           otherwise="open"),
              "confirmed if RevNet coupling blocks train in flat memory at 4/3 of backprop's FLOPs, and a "
              "reversible transformer's step peak grows by less than half of one block's cache from 2 to 6 "
              "blocks (measured in the chapter on reversible transformers)",
              "{ref}`blocks-coupling-flops`"),
    )
