-- id: phi-read-after-escalation
-- title: A user read PHI within 15 minutes of gaining root
-- severity: critical
-- hipaa: 164.312(a)(1)
-- mitre: T1068, T1548
-- version: 1
-- window: 15m
SELECT *
FROM events
WHERE is_phi
  AND kind IN ('open', 'read')
  AND minutes_since_escalation <= 15
