"""Rewrite TEST code so its comparisons and truth tests use the harness's strict comparator.

`assert candidate(x) == y` becomes `assert __bgpo_truth__(__bgpo_cmp__(('Eq',), candidate(x), y))`;
the harness binds those names to rewards/code_harness.py's _strict_cmp/_strict_truth in its
trusted process P, where the tests run. The values there are already plain (candidate results
cross as plain data, or as opaque handles), so the rewrite is no longer what keeps a custom
__eq__ out; it stays because it defines the comparison semantics the tasks were scored with
(floats within a tolerance, 1 == 1.0 == True, a list never equal to a tuple) and refuses the
handles and remote iterators that stand for candidate objects.
Runs on the host, on trusted test code only (dataset tests), never on candidate code; doing it
here spares every sandboxed run the import of `ast`.

Does not change: identity tests (`is`), arithmetic, calls. A comparison chain's operands are
all evaluated before comparing (Python stops at the first false link); tests do not rely on it.
"""

from __future__ import annotations

import ast
import functools


class _StrictRewriter(ast.NodeTransformer):
    """Route comparisons and truth tests through __bgpo_cmp__ / __bgpo_truth__."""

    def _truth(self, node: ast.expr) -> ast.expr:
        return ast.Call(ast.Name("__bgpo_truth__", ast.Load()), [node], [])

    def visit_Compare(self, node: ast.Compare) -> ast.expr:
        self.generic_visit(node)
        ops = ast.Tuple([ast.Constant(type(op).__name__) for op in node.ops], ast.Load())
        args = [ops, node.left, *node.comparators]
        return ast.Call(ast.Name("__bgpo_cmp__", ast.Load()), args, [])

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        self.generic_visit(node)
        node.test = self._truth(node.test)
        return node

    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.expr:
        self.generic_visit(node)
        if isinstance(node.op, ast.Not):
            node.operand = self._truth(node.operand)
        return node

    def visit_BoolOp(self, node: ast.BoolOp) -> ast.expr:
        self.generic_visit(node)
        node.values = [self._truth(v) for v in node.values]
        return node

    def _visit_test_holder(self, node):  # If, While, IfExp: their `test` is a truth test
        self.generic_visit(node)
        node.test = self._truth(node.test)
        return node

    visit_If = visit_While = visit_IfExp = _visit_test_holder


@functools.lru_cache(maxsize=4096)  # a row's tests come back for every sample of its group
def strict_test_source(source: str) -> str:
    """The rewritten test source; unparsable source is returned as is (it fails in the sandbox)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return source
    return ast.unparse(ast.fix_missing_locations(_StrictRewriter().visit(tree)))
