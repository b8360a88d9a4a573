//! Vigil's collector: the user-space side of the node agent.
//!
//! Not built yet. It will load the CO-RE programs from `collector-ebpf/` with
//! aya, fill their scope maps (watched PHI path prefixes, uid and cgroup
//! scopes) from configuration, drain the ring buffer, enrich each record
//! (user and login names, parent executable, container id, host, wall-clock
//! time), number it with the per-host sequence, encode it with
//! `vigil-schemas` and publish it to `vigil.events.v1` keyed by principal.
//! Kernel drops and producer overflow become `gap` events.
//!
//! Until then this crate holds no code: the README's status section says so.
