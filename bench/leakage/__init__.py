"""What the database learns from the server-side search index: a known-document attack.

``attack.py`` is the attacker (SQL access to ``kb_entries``, the public tokenizer and
model, the plaintext of some documents); ``bench/bench_leakage.py`` runs it on a real
corpus, before and after hardening. No sealedkb key is used by the attack.
"""
