"""Audit checks of the kernels: the gpytorch Tanimoto kernel's diagonal mode."""

import gpytorch
import torch

from probrec.gp.kernels import TanimotoKernel, gpytorch_kernel, tanimoto


def test_tanimoto_kernel_diag_is_the_diagonal_of_the_matrix():
    """``k(x1, x2, diag=True)`` (and ``k(x1, x2).diagonal()``) returned ones whatever the
    inputs: 1, 1, 1 for the pairs whose MinMax similarities are 0.5, 1 and 0."""
    x1 = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
    x2 = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    expected = torch.tensor([2.0 / 4.0, 1.0, 0.0, 1.0])  # sum min / sum max, row by row
    k = TanimotoKernel()
    with torch.no_grad():
        torch.testing.assert_close(k(x1, x2, diag=True), expected)
        torch.testing.assert_close(k(x1, x2).diagonal(), expected)
        torch.testing.assert_close(k(x1, x2, diag=True), tanimoto(x1, x2).diagonal())
        torch.testing.assert_close(k(x1, x1, diag=True), torch.ones(4))
        scaled = gpytorch_kernel("tanimoto")
        scaled.outputscale = 2.0
        torch.testing.assert_close(scaled(x1, x2, diag=True), 2.0 * expected)
        batch = torch.stack([x1, x2])
        torch.testing.assert_close(
            k(batch, batch.flip(0), diag=True), torch.stack([expected, expected])
        )
    # the same rows through gpytorch's own diagonal of a dense evaluation
    with torch.no_grad(), gpytorch.settings.lazily_evaluate_kernels(False):
        torch.testing.assert_close(k(x1, x2).to_dense().diagonal(), expected)
