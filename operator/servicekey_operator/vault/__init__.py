"""The key store: Vault (or OpenBao) behind a narrow interface; hvac errors become ours here."""
