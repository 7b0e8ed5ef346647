//! Following the VCPU grant: VCPUs beyond it go down at their next scheduling point; when it
//! rises, a VCPU at a scheduling point brings up the next one (vcpu_up), one at a time.

use sched::Ns;
use sched::harness::State;

use super::{Effect, Guest, Monitor, Then};

impl Guest {
    /// The monitor publishes grant `grant`: every VCPU is kicked or poked, and follows at its
    /// next scheduling point.
    pub fn set_grant(&mut self, grant: u32, m: &mut Monitor) {
        self.grant = grant;
        self.grant_changed = Some(m.now);
        for y in 0..self.cpus.len() {
            match m.states[y] {
                State::Blocked => self.kick(y, m),
                State::Runnable => self.poke(y, 0, m),
                State::Offline => {}
            }
        }
        self.online_changed(m);
    }

    /// VCPUs the guest keeps online.
    pub fn grant(&self) -> u32 {
        self.grant
    }

    /// A VCPU came up or went down: once the online VCPUs match the grant, the change is
    /// followed.
    pub fn online_changed(&mut self, m: &Monitor) {
        let Some(since) = self.grant_changed else { return };
        if online(m) == self.grant {
            self.followed.push(m.now - since);
            self.grant_changed = None;
        }
    }

    /// How long each grant change took to be followed.
    pub fn followed(&self) -> &[Ns] {
        &self.followed
    }

    /// A VCPU whose index is at or above the grant.
    pub(super) fn surplus(&self, x: usize) -> bool {
        x as u32 >= self.grant
    }

    /// Whether fewer VCPUs are online than granted and none is on its way up.
    pub(super) fn grow_due(&self, m: &Monitor) -> bool {
        self.grant_changed.is_some() && !self.growing && online(m) < self.grant
    }

    /// `x` brings up the next VCPU (the lowest offline one): a vcpu_up hypercall.
    pub(super) fn grow(&mut self, x: usize, m: &mut Monitor) {
        self.growing = true;
        m.effects.push(Effect::Wake { vcpu: online(m) as usize, after: self.costs.exit + self.costs.up });
        self.hypercall(x, Then::Return, self.cpus[x].activity);
    }

    /// The guest is initialised: VCPU 0 brings up the other granted VCPUs one vcpu_up at a
    /// time, and the workload starts (a server listens).
    pub(super) fn booted(&mut self, m: &mut Monitor) {
        self.started = Some(m.now);
        self.opened_at = m.now;
        for y in 1..self.grant as usize {
            m.effects.push(Effect::Wake { vcpu: y, after: y as Ns * self.costs.exit + self.costs.up });
        }
        if self.model.served.is_some() {
            m.effects.push(Effect::Listening);
        }
    }
}

/// The VM's VCPUs online.
fn online(m: &Monitor) -> u32 {
    m.states.iter().filter(|&&state| state != State::Offline).count() as u32
}
