"""Products: the unit every device and firmware file belongs to."""

from __future__ import annotations

import re

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from ota.db.engine import session_scope
from ota.db.models import Product
from ota.errors import Conflict, InvalidInput, NotFound

PRODUCT_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PRODUCT_NAME_MAX = 64


def validate_product_key(product_key: str, field: str = "product_key") -> str:
    if not PRODUCT_KEY_RE.fullmatch(product_key or ""):
        raise InvalidInput(field, "must be 1 to 64 characters of letters, digits, '_' and '-'")
    return product_key


def validate_product_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > PRODUCT_NAME_MAX:
        raise InvalidInput("name", f"must be 1 to {PRODUCT_NAME_MAX} characters")
    if any(not ch.isprintable() for ch in name):
        raise InvalidInput("name", "must not contain control characters")
    return name


def add_product(engine: Engine, product_key: str, name: str) -> Product:
    validate_product_key(product_key)
    name = validate_product_name(name)
    product = Product(product_key=product_key, name=name)
    try:
        with session_scope(engine) as session:
            if session.get(Product, product_key) is not None:
                raise Conflict(f"product {product_key} already exists", field="product_key")
            session.add(product)
    except IntegrityError:  # a concurrent add of the same key won the race
        raise Conflict(f"product {product_key} already exists", field="product_key") from None
    return product


def list_products(engine: Engine) -> list[Product]:
    with Session(engine) as session:
        return list(session.exec(select(Product).order_by(Product.product_key)))


def get_product(engine: Engine, pk: str) -> Product:
    with Session(engine) as session:
        return require_product(session, pk)


def require_product(session: Session, pk: str) -> Product:
    """The product, read inside the caller's transaction; NotFound names it. A key no product
    can have is not looked up: PostgreSQL refuses a NUL byte in a text parameter."""
    product = session.get(Product, pk) if PRODUCT_KEY_RE.fullmatch(pk or "") else None
    if product is None:
        raise NotFound("product", pk)
    return product


def product_public(product: Product) -> dict:
    """The product as the CLI's --json and the API show it: never the private key."""
    return {
        "product_key": product.product_key,
        "name": product.name,
        "secure_update": product.secure_update,
        "public_key": product.public_key,
        "created_at": product.created_at.isoformat() if product.created_at else None,
    }
