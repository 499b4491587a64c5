-- sealedkb schema 011: a MAC on every alarm state and history row (monitoring/alarms.py
-- computes it under the key provider's audit key, which never reaches PostgreSQL), so a
-- database writer cannot forge or clear an alarm's state: a row whose MAC fails is
-- refused (the alarm is evaluated afresh and notifies again) and counted as an
-- integrity failure. NULL in a plaintext knowledge base (no key to MAC with).
ALTER TABLE kb_alarm_state ADD COLUMN IF NOT EXISTS mac bytea;
ALTER TABLE kb_alarm_history ADD COLUMN IF NOT EXISTS mac bytea;
