-- id: phi-bulk-read
-- title: More than 200 PHI files opened by one user in 15 minutes
-- severity: high
-- hipaa: 164.312(b)
-- mitre: T1005
-- version: 1
-- window: 15m
SELECT *
FROM events
WHERE is_phi
  AND kind = 'open'
  AND errno = 0
  AND user_phi_opens_15m > 200
