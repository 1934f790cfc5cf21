//! Dotted field paths (`spec.ports[1].protocol`) built on the stack and rendered only when a
//! diagnostic needs them, so walking a valid document allocates no path strings.

use std::fmt;

#[derive(Clone, Copy)]
enum Seg<'p> {
    Root,
    Key(&'p str),
    Index(usize),
}

/// A path from the object root, e.g. `spec.trafficPolicy.tls.mode`.
#[derive(Clone, Copy)]
pub(crate) struct Field<'p> {
    parent: Option<&'p Field<'p>>,
    seg: Seg<'p>,
}

impl<'p> Field<'p> {
    /// The object itself (renders as the empty string).
    pub const ROOT: Field<'static> = Field { parent: None, seg: Seg::Root };

    /// `self.k`
    pub fn key<'q>(&'q self, k: &'q str) -> Field<'q> {
        Field { parent: Some(self), seg: Seg::Key(k) }
    }

    /// `self[i]`
    pub fn idx(&self, i: usize) -> Field<'_> {
        Field { parent: Some(self), seg: Seg::Index(i) }
    }
}

impl fmt::Display for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut segs = Vec::new();
        let mut cur = Some(self);
        while let Some(c) = cur {
            segs.push(c.seg);
            cur = c.parent;
        }
        let mut first = true;
        for s in segs.iter().rev() {
            match s {
                Seg::Root => {}
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                    first = false;
                }
                Seg::Index(i) => {
                    write!(f, "[{i}]")?;
                    first = false;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_dotted_paths() {
        let spec = Field::ROOT.key("spec");
        let ports = spec.key("ports");
        let p1 = ports.idx(1);
        assert_eq!(p1.key("protocol").to_string(), "spec.ports[1].protocol");
        assert_eq!(Field::ROOT.to_string(), "");
        assert_eq!(Field::ROOT.key("kind").to_string(), "kind");
        let e = spec.key("endpoints");
        let e0 = e.idx(0);
        assert_eq!(e0.key("ports").key("http").to_string(), "spec.endpoints[0].ports.http");
    }
}
