"""``orset-cart``: an add-wins observed-remove set shopping cart for Dynamo in Python.

Unlike the built-in ``cart-union``, an item removed on one side of a partition does not come
back when the other side's cart is merged in; an add the remover had not seen still wins.

* :class:`OrSetCart` is the resolver; this module is the plugin the ``dynamo`` entry point
  ``orset-cart`` loads, offering it as ``resolver = "orset-cart"``.
* :class:`Cart` is the application's handle; :func:`merge` merges read values client-side.
* :mod:`dynamo_orset_cart.state` documents the stored format and the merge.
"""

from __future__ import annotations

from .cart import Cart
from .resolver import OrSetCart, dynamo_resolvers
from .state import FORMAT_VERSION, InvalidCartState, empty_value, merge

__all__ = ["FORMAT_VERSION", "Cart", "InvalidCartState", "OrSetCart", "dynamo_resolvers",
           "empty_value", "merge"]
