-- id: phi-read-new-host
-- title: A user opened more than 100 PHI files in 15 minutes from a host they first used less than a day ago
-- severity: high
-- hipaa: 164.312(d)
-- mitre: T1078, T1005
-- version: 1
-- window: 15m
SELECT *
FROM events
WHERE is_phi
  AND kind = 'open'
  AND errno = 0
  AND user_phi_opens_15m > 100
  AND hours_on_host < 24
