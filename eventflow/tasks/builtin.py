"""Built-in handlers for the event types in the original design."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from .registry import PermanentError, handler
from .transitions import ClaimedEvent


def _amount(value: object, field: str, index: int) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PermanentError(f"items[{index}].{field} must be a number")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise PermanentError(f"items[{index}].{field} must be a number") from None
    if not amount.is_finite() or amount < 0:
        raise PermanentError(f"items[{index}].{field} must be a non-negative number")
    return amount


@handler("ORDER_CREATED")
def order_created(event: ClaimedEvent) -> dict[str, float | int]:
    """Sum items[].price * qty (qty defaults to 1) into the order total."""
    items = event.payload.get("items")
    if not isinstance(items, list) or not items:
        raise PermanentError("order has no items")
    total = Decimal(0)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise PermanentError(f"items[{index}] must be an object")
        total += _amount(item.get("price"), "price", index) * _amount(
            item.get("qty", 1), "qty", index
        )
    return {"total": float(total), "items": len(items)}


def _count_properties(event: ClaimedEvent) -> dict[str, int]:
    """Analytics events are counted: how many properties and (for batches) how many hits."""
    hits = event.payload.get("events")
    return {
        "counted": len(hits) if isinstance(hits, list) else 1,
        "properties": len(event.payload),
    }


for _analytics_type in ("PAGE_VIEW", "USER_SIGNUP", "ANALYTICS", "CLICK"):
    handler(_analytics_type)(_count_properties)
