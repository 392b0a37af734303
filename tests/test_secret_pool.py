"""A large registration makes its devices' secrets on every core (ota/identity/secret_pool.py):
the same secrets as on one, each encrypted for its own device, in the names' order."""

from __future__ import annotations

from ota.identity import registry
from ota.identity.credentials import decrypt_secret
from ota.identity.secret_pool import make_secrets_on_cores
from ota.settings import Settings

KEY = b"k" * 32


def test_secrets_made_in_helper_processes_decrypt_for_their_device_only():
    names = [f"dev{i:04d}" for i in range(301)]
    made = make_secrets_on_cores(KEY, "pk1", names, workers=3)
    assert [name for name, _, _ in made] == names
    assert len({secret for _, secret, _ in made}) == len(names)
    for name, secret, stored in made[::50]:
        assert decrypt_secret(stored, KEY, "pk1", name) == secret
    name, _, stored = made[0]
    try:
        decrypt_secret(stored, KEY, "pk1", names[1])  # another device's row: refused
    except Exception as exc:  # noqa: BLE001 (SecretError)
        assert "does not decrypt" in str(exc)
    else:
        raise AssertionError("a secret decrypted for another device")


def test_a_large_registration_uses_the_helpers(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path)
    used: list[int] = []
    monkeypatch.setattr(registry, "POOL_FROM", 10)
    monkeypatch.setattr(registry, "make_secrets_on_cores", lambda k, pk, n: used.append(len(n))
                        or make_secrets_on_cores(k, pk, n, workers=2))  # fmt: skip
    registered = registry.register_secrets(settings, "pk1", [f"dev{i:03d}" for i in range(12)])
    assert used == [12] and len(registered) == 12
    key = settings.resolved_key_encryption_secret
    assert all(
        decrypt_secret(registered.stored[n], key, "pk1", n) == s
        for n, s in registered.secrets.items()
    )
