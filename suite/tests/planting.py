"""Planted bugs: a case whose manual (or reference) output is deliberately broken.

The suite is only as good as its ability to fail; these helpers let a test show that a
specific, plausible mistake turns a PASS into a FAIL.
"""

import dataclasses

import jax
import jax.numpy as jnp


def plant(case, manual=None, reference=None):
    """A copy of ``case`` whose outputs pass through ``manual`` / ``reference`` mutators."""
    def wrap(fn, mutate):
        return fn if mutate is None else (lambda inputs: mutate(fn(inputs)))
    return dataclasses.replace(case, name=case.name + "+planted",
                               manual=wrap(case.manual, manual),
                               reference=wrap(case.reference, reference))


def nudge_one_element(tree, rel=1e-6):
    """Perturb the largest-magnitude entry of the largest leaf by ``rel`` of the leaf's scale."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    i = max(range(len(leaves)), key=lambda k: leaves[k].size)
    leaf = leaves[i]
    flat = leaf.ravel()
    j = jnp.argmax(jnp.abs(flat))
    leaves[i] = flat.at[j].add(rel * jnp.abs(flat[j])).reshape(leaf.shape)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def scale(tree, factor):
    return jax.tree_util.tree_map(lambda x: factor * x, tree)
