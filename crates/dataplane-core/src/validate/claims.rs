//! The frontends a [`Validator`](super::Validator) keeps, compactly.
//!
//! A validated state's frontend claims were a `BTreeMap` from frontend to a shared claimant
//! string (`service default/web ports[0]`): at 100k services ~10 MB, a tree node share and a
//! string allocation per service port. Here each claim is a fixed-size entry of a hash map
//! (the frontend, and where its claimant's object name is in one text with the field it
//! claims through), and each object's name is in the text once.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::model::Protocol;

use super::FrontendClaims;

/// A frontend: address, protocol, port.
pub(super) type Frontend = (IpAddr, Protocol, u16);

/// `Claim::field` of a `healthCheckNodePort` claim; other claims are a port's index.
const HEALTH_CHECK: u32 = u32::MAX;
/// `Claim::field` of a claimant of no known form: the stored name is its whole text.
const WHOLE: u32 = u32::MAX - 1;

/// Who claims a frontend: the object's name at `at` in [`ClaimTable::text`] (a length byte,
/// then the name), and the field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    at: u32,
    field: u32,
}

/// Frontend -> claimant, as [`FrontendClaims`] but a few bytes a claim.
#[derive(Debug, Clone, Default)]
pub(super) struct ClaimTable {
    claims: HashMap<Frontend, Claim>,
    /// The claimants' objects (`service default/web`), each after its length byte.
    text: Vec<u8>,
    /// Bytes of `text` that no claim points at any more.
    garbage: usize,
}

/// The claimant text of a [`FrontendClaims`] value as (object, field): the forms
/// `validate_service` writes, anything else as a whole.
fn split(what: &str) -> (&str, u32) {
    if let Some(object) = what.strip_suffix(" healthCheckNodePort") {
        return (object, HEALTH_CHECK);
    }
    let port = what.rsplit_once(" ports[").and_then(|(object, index)| {
        let digits = index.strip_suffix(']')?;
        // Written back as `{index}`: only the digits that formatting gives back.
        let canonical = digits.bytes().all(|b| b.is_ascii_digit())
            && (digits == "0" || !digits.starts_with('0'));
        let index: u32 = digits.parse().ok()?;
        (canonical && index < WHOLE).then_some((object, index))
    });
    port.unwrap_or((what, WHOLE))
}

impl ClaimTable {
    /// The object of `claim`.
    fn object(&self, claim: Claim) -> &str {
        let at = claim.at as usize;
        let len = self.text.get(at).copied().unwrap_or(0) as usize;
        self.text
            .get(at + 1..at + 1 + len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or("")
    }

    /// The claimant of `frontend`, as a full validation names it (`service a/b ports[0]`).
    pub(super) fn get(&self, frontend: &Frontend) -> Option<String> {
        let claim = *self.claims.get(frontend)?;
        let object = self.object(claim);
        Some(match claim.field {
            HEALTH_CHECK => format!("{object} healthCheckNodePort"),
            WHOLE => object.to_owned(),
            index => format!("{object} ports[{index}]"),
        })
    }

    /// Removes the claims of `frontends` that `object` holds; returns where its name is in
    /// the text (for [`ClaimTable::extend`] to reuse), if it held one.
    pub(super) fn remove_held(
        &mut self,
        object: &str,
        frontends: impl Iterator<Item = Frontend>,
    ) -> Option<u32> {
        let mut at = None;
        for f in frontends {
            if let Some(c) = self.claims.get(&f).copied() {
                if self.object(c) == object {
                    self.claims.remove(&f);
                    at = Some(c.at);
                }
            }
        }
        at
    }

    /// Records `add`. `reuse` holds where objects' names already are in the text (the
    /// objects whose claims were just removed); those no claim takes again count as
    /// garbage, and the text is compacted when that is half of it.
    pub(super) fn extend(&mut self, add: &FrontendClaims, reuse: &[(String, u32)]) {
        let mut names: HashMap<&str, u32> = reuse.iter().map(|(o, at)| (o.as_str(), *at)).collect();
        let mut taken: HashSet<u32> = HashSet::new();
        for (frontend, what) in add {
            let (object, field) = split(what);
            let at = if let Some(at) = names.get(object) {
                *at
            } else {
                let at = self.push(object);
                names.insert(object, at);
                at
            };
            if !reuse.is_empty() {
                taken.insert(at);
            }
            self.claims.insert(*frontend, Claim { at, field });
        }
        for (_, at) in reuse {
            if !taken.contains(at) {
                self.garbage += 1 + self.text.get(*at as usize).copied().unwrap_or(0) as usize;
            }
        }
        if self.garbage > 4096 && self.garbage * 2 > self.text.len() {
            self.compact();
        }
    }

    /// Appends `object`'s name; returns where. A name is at most 255 bytes (validated
    /// objects' are under 140); a longer one is cut on a character boundary.
    fn push(&mut self, object: &str) -> u32 {
        let mut end = object.len().min(255);
        while !object.is_char_boundary(end) {
            end -= 1;
        }
        let at = self.text.len() as u32;
        self.text.push(end as u8);
        self.text.extend_from_slice(&object.as_bytes()[..end]);
        at
    }

    /// Rewrites the text with only the names claims point at.
    fn compact(&mut self) {
        let old = std::mem::take(&mut self.text);
        let mut moved: HashMap<u32, u32> = HashMap::new();
        for claim in self.claims.values_mut() {
            claim.at = *moved.entry(claim.at).or_insert_with(|| {
                let at = claim.at as usize;
                let len = old.get(at).copied().unwrap_or(0) as usize;
                let new = self.text.len() as u32;
                self.text
                    .extend_from_slice(old.get(at..at + 1 + len).unwrap_or(&[0]));
                new
            });
        }
        self.text.shrink_to_fit();
        self.garbage = 0;
    }

    /// The claims, for tests: frontend -> claimant text.
    #[cfg(test)]
    pub(super) fn to_claims(&self) -> std::collections::BTreeMap<Frontend, String> {
        self.claims
            .keys()
            .filter_map(|f| Some((*f, self.get(f)?)))
            .collect()
    }
}

impl From<FrontendClaims> for ClaimTable {
    fn from(claims: FrontendClaims) -> Self {
        let mut table = ClaimTable {
            claims: HashMap::with_capacity(claims.len()),
            ..ClaimTable::default()
        };
        table.extend(&claims, &[]);
        drop(claims);
        table.text.shrink_to_fit();
        table
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{validate_claims, Incremental, Validator};
    use super::{ClaimTable, Frontend};
    use crate::model::{DesiredState, Protocol, ServicePort};
    use crate::{diff, synthetic};

    fn claims_of(st: &DesiredState) -> BTreeMap<Frontend, String> {
        let (claims, _) = validate_claims(st).unwrap();
        claims
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect()
    }

    #[test]
    fn claimants_split_into_object_and_field_and_back() {
        use super::{split, HEALTH_CHECK, WHOLE};
        assert_eq!(split("service a/b ports[12]"), ("service a/b", 12));
        assert_eq!(
            split("service a/b healthCheckNodePort"),
            ("service a/b", HEALTH_CHECK)
        );
        for odd in [
            "service a/b ports[01]",
            "service a/b ports[x]",
            "service a/b",
        ] {
            assert_eq!(split(odd), (odd, WHOLE), "{odd}");
        }
    }

    /// A validator committed through changes holds what a full validation of the result
    /// claims, and the names of removed services do not pile up in its text.
    #[test]
    fn commits_keep_the_claims_of_a_full_validation() {
        let mut old = synthetic::state(3000, 2);
        let two = &mut old.services[7];
        two.ports[0].name = "http".to_owned();
        two.ports.push(ServicePort {
            name: "dns".to_owned(),
            protocol: Protocol::Udp,
            port: 53,
            target_port: 53,
            node_port: Some(31999),
        });
        let mut v = Validator::new(&old).unwrap();
        assert_eq!(v.frontends.to_claims(), claims_of(&old));
        let mut st = old;
        for round in 0..3 {
            let mut new = st.clone();
            // Most services go (their names become garbage), one changes, some come.
            new.services.retain(|s| s.name.name.len() % 3 != round);
            new.services[0].backends.pop();
            new.services
                .extend((0..200).map(|i| synthetic::service(10_000 + round * 1000 + i, 2)));
            let changes = diff(&st, &new);
            assert_eq!(v.check(&st.node, &changes), Ok(Incremental::Valid));
            v.commit(&st.node, &changes);
            assert_eq!(v.frontends.to_claims(), claims_of(&new), "round {round}");
            let fresh = ClaimTable::from(validate_claims(&new).unwrap().0);
            assert!(
                v.frontends.text.len() <= 2 * fresh.text.len().max(4096),
                "round {round}: {} bytes of names for {} fresh",
                v.frontends.text.len(),
                fresh.text.len()
            );
            st = new;
        }
    }
}
