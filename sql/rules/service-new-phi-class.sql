-- id: service-new-phi-class
-- title: A service account read a kind of PHI it has never read before
-- severity: high
-- hipaa: 164.312(a)(1)
-- mitre: T1005, T1078.003
-- version: 1
-- window: 1h
SELECT *
FROM events
WHERE is_phi
  AND kind IN ('open', 'read')
  AND login_uid IS NULL
  AND first_seen_file_class
