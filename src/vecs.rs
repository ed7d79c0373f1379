//! Lists that grow with events, grown by a quarter at a time.
//!
//! A `Vec` doubles when it is full: ten thousand meters' lists of 1,000 entries each grow
//! to room for 2,048 on the 1,025th, and the process holds twice what it needs (PERFORMANCE
//! §13). Growing by a quarter copies each entry a few more times over its life and keeps
//! the slack under a quarter.

/// Makes room for `additional` more entries in `v`, a quarter of its length at least.
pub fn reserve_lean<T>(v: &mut Vec<T>, additional: usize) {
    if v.len() + additional > v.capacity() {
        v.reserve_exact(additional.max(v.len() / 4).max(4));
    }
}

/// Pushes `x`, growing `v` by [`reserve_lean`].
pub fn push_lean<T>(v: &mut Vec<T>, x: T) {
    reserve_lean(v, 1);
    v.push(x);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_grows_by_a_quarter_not_double() {
        let mut v = Vec::new();
        for i in 0..1_000u32 {
            push_lean(&mut v, i);
        }
        assert!(v.capacity() < 1_250, "{}", v.capacity());
        push_lean(&mut v, 0);
        assert!(v.capacity() <= 1_250, "{}", v.capacity());
        let mut w: Vec<u64> = vec![0; 1_000];
        w.shrink_to_fit();
        reserve_lean(&mut w, 600);
        assert!(w.capacity() >= 1_600 && w.capacity() < 2_000, "{}", w.capacity());
    }
}
