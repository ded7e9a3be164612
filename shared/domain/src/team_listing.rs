//! Every job a caller may see, newest first, across teams: each team's jobs are one
//! index range (`by_team`, newest first), and a page is the newest entries of the
//! ranges merged. A page's token holds, for each team not yet read to its end, where
//! its range goes on from, so a page costs one read per team, not a walk of anything
//! already shown.
//!
//! A team's read may stop early (a filter that matches little, and a bound on what one
//! call looks at): its *frontier* is the last entry it looked at, and nothing of that
//! team older than the frontier has been seen. An entry of another team is shown only
//! if it is at least as new as every frontier, so a page never shows a job before a
//! newer one that a later page would show.

use std::collections::BTreeMap;

/// A place in a team's range: a job by its creation time and id, newest first (ids
/// break ties between jobs created in the same millisecond).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Cursor {
    pub created_at: i64,
    pub job_id: String,
}

/// What one page read of one team.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRead {
    pub team: String,
    /// The entries that matched, newest first, all after the team's start.
    pub matches: Vec<Cursor>,
    /// The last entry looked at when the range goes on beyond it; `None` at its end.
    pub frontier: Option<Cursor>,
}

/// Where each team still to read goes on from (`None`: from its newest job). A team
/// read to its end is absent.
pub type Starts = BTreeMap<String, Option<Cursor>>;

/// A merged page: the entries shown (team and place), newest first, and where each
/// team goes on from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Merged {
    pub shown: Vec<(String, Cursor)>,
    pub next: Starts,
}

/// Merge the teams' reads into a page of at most `max`, given where each read started.
/// Each team's entries are taken in its own range's order (jobs created in the same
/// millisecond may come in any order there), so where a team goes on from is always
/// just after what was shown of it.
pub fn merge_newest(reads: &[TeamRead], starts: &Starts, max: usize) -> Merged {
    // Every entry shown must be at least as new as every frontier: older than a
    // frontier, a team may have entries not yet seen.
    let bound = reads
        .iter()
        .filter_map(|r| r.frontier.as_ref().map(|f| f.created_at))
        .max();
    let mut taken = vec![0usize; reads.len()];
    let mut shown = Vec::new();
    while shown.len() < max {
        let newest = reads
            .iter()
            .enumerate()
            .filter_map(|(i, r)| Some((i, r.matches.get(taken[i])?)))
            .filter(|(_, c)| bound.is_none_or(|b| c.created_at >= b))
            .max_by(|a, b| a.1.cmp(b.1));
        let Some((i, c)) = newest else { break };
        shown.push((reads[i].team.clone(), c.clone()));
        taken[i] += 1;
    }
    let mut next = Starts::new();
    for (read, &k) in reads.iter().zip(&taken) {
        let start = if k < read.matches.len() {
            // Some of its matches wait for a later page: go on after the last shown.
            match k.checked_sub(1) {
                Some(last) => Some(read.matches[last].clone()),
                None => starts.get(&read.team).cloned().flatten(),
            }
        } else {
            // Everything it matched is shown: go on from what it looked at last.
            match &read.frontier {
                Some(f) => Some(f.clone()),
                None => continue,
            }
        };
        next.insert(read.team.clone(), start);
    }
    Merged { shown, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: i64, id: &str) -> Cursor {
        Cursor {
            created_at: t,
            job_id: id.into(),
        }
    }

    /// A team's whole range (newest first), read by pages the way the store reads it:
    /// up to `look` entries a read, `keep` says which match.
    fn read(
        range: &[Cursor],
        start: &Option<Cursor>,
        look: usize,
        keep: &dyn Fn(&Cursor) -> bool,
        team: &str,
    ) -> TeamRead {
        let from = match start {
            Some(s) => range.iter().position(|c| c == s).map_or(0, |p| p + 1),
            None => 0,
        };
        let rest: Vec<&Cursor> = range[from..].iter().collect();
        let seen = &rest[..rest.len().min(look)];
        TeamRead {
            team: team.into(),
            matches: seen
                .iter()
                .filter(|c| keep(c))
                .map(|c| (*c).clone())
                .collect(),
            frontier: (rest.len() > look).then(|| seen[seen.len() - 1].clone()),
        }
    }

    fn list_all(
        ranges: &BTreeMap<&str, Vec<Cursor>>,
        look: usize,
        max: usize,
        keep: &dyn Fn(&Cursor) -> bool,
    ) -> Vec<(String, Cursor)> {
        let mut starts: Starts = ranges.keys().map(|t| (t.to_string(), None)).collect();
        let mut out = Vec::new();
        for _ in 0..1000 {
            if starts.is_empty() {
                return out;
            }
            let reads: Vec<TeamRead> = starts
                .iter()
                .map(|(t, s)| read(&ranges[t.as_str()], s, look, keep, t))
                .collect();
            let page = merge_newest(&reads, &starts, max);
            assert!(page.shown.len() <= max);
            out.extend(page.shown);
            starts = page.next;
        }
        panic!("the listing never ended");
    }

    fn ranges() -> BTreeMap<&'static str, Vec<Cursor>> {
        let mut r = BTreeMap::new();
        // research creates often, finance seldom, ops in a burst at one millisecond
        // (which its range holds in no particular order of id).
        r.insert(
            "research",
            (0..40)
                .rev()
                .map(|i| at(100 + i * 3, &format!("r{i:02}")))
                .collect(),
        );
        r.insert(
            "finance",
            (0..5)
                .rev()
                .map(|i| at(90 + i * 25, &format!("f{i}")))
                .collect(),
        );
        r.insert(
            "ops",
            [3, 0, 5, 1, 4, 2]
                .iter()
                .map(|i| at(150, &format!("o{i}")))
                .collect(),
        );
        r
    }

    #[test]
    fn pages_list_every_job_once_newest_first_whatever_their_size() {
        let r = ranges();
        let total: usize = r.values().map(Vec::len).sum();
        for look in [1, 3, 7, 100] {
            for max in [1, 2, 5, 50] {
                let got = list_all(&r, look, max, &|_| true);
                assert_eq!(got.len(), total, "look {look}, max {max}");
                let mut ids: Vec<&str> = got.iter().map(|(_, c)| c.job_id.as_str()).collect();
                for w in got.windows(2) {
                    assert!(
                        w[0].1.created_at >= w[1].1.created_at,
                        "look {look}, max {max}: {w:?} out of order"
                    );
                }
                ids.sort();
                ids.dedup();
                assert_eq!(ids.len(), total, "look {look}, max {max}: a job twice");
            }
        }
    }

    #[test]
    fn a_sparse_filter_gives_short_pages_but_loses_and_repeats_nothing() {
        let r = ranges();
        let keep = |c: &Cursor| c.job_id.ends_with('3') || c.job_id == "f0";
        let want: usize = r.values().flatten().filter(|c| keep(c)).count();
        let got = list_all(&r, 2, 3, &keep);
        assert_eq!(got.len(), want);
        for w in got.windows(2) {
            assert!(w[0].1.created_at >= w[1].1.created_at, "{w:?}");
        }
    }

    #[test]
    fn a_team_read_to_its_end_is_not_read_again() {
        let starts: Starts = [("a".to_string(), None), ("b".to_string(), None)].into();
        let reads = [
            TeamRead {
                team: "a".into(),
                matches: vec![at(5, "a1")],
                frontier: None,
            },
            TeamRead {
                team: "b".into(),
                matches: vec![at(9, "b2"), at(1, "b1")],
                frontier: None,
            },
        ];
        let page = merge_newest(&reads, &starts, 2);
        assert_eq!(
            page.shown,
            vec![("b".into(), at(9, "b2")), ("a".into(), at(5, "a1"))]
        );
        assert_eq!(page.next, [("b".to_string(), Some(at(9, "b2")))].into());
    }
}
