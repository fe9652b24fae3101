//! Serde helpers of the `Raw*` structs that every section reads the YAML into: values keep
//! their position ([`Text`]), and these say how an absent key, an explicit `null` and a
//! mapping are read.

use serde::de;
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// Turns an explicit `null` (e.g. `workloads:` with every entry commented
/// out) into an empty list instead of a type error.
pub(super) fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// Distinguishes a present key from an absent one even when its value is
/// `null`: plain `Option` would read `egress:` (null) as "absent", silently
/// turning an intended deny-all policy into allow-all.
pub(super) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

pub(super) type Text = Spanned<String>;

/// A YAML mapping as its entries in file order, spans kept on keys and
/// values; an explicit `null` is an empty mapping.
pub(super) fn entries<'de, D>(deserializer: D) -> Result<Vec<(Text, Text)>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Entries(Vec<(Text, Text)>);

    impl<'de> Deserialize<'de> for Entries {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct EntriesVisitor;

            impl<'de> de::Visitor<'de> for EntriesVisitor {
                type Value = Entries;

                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a mapping of names to values")
                }

                fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                    let mut out = Vec::new();
                    while let Some(entry) = map.next_entry::<Text, Text>()? {
                        out.push(entry);
                    }
                    Ok(Entries(out))
                }
            }

            deserializer.deserialize_map(EntriesVisitor)
        }
    }

    Ok(Option::<Entries>::deserialize(deserializer)?.map_or_else(Vec::new, |e| e.0))
}
