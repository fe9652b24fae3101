//! Where a route attaches and where its requests go: `parentRefs` (the Services a route
//! attaches to, GAMMA style) and `backendRefs` (the Service ports that requests are sent to,
//! by weight), with the checks they share with a mirror's `backendRef`: the Service must be
//! defined, and the port must be one of its ports.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_saphyr::{Location, Spanned};

use super::{MAX_BACKEND_REFS, MAX_WEIGHT, Scope};
use crate::config::Service;
use crate::config::checker::{Checker, ConfigError};
use crate::config::raw::Text;
use crate::config::scalars::quote;

/// A Service a route attaches to (`parentRefs`); Gateway API's GAMMA (mesh) form: kind
/// Service, group "" (or "core").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentRef {
    pub name: String,
    /// Defaults to the route's namespace.
    pub namespace: String,
    /// `None`: every port of the service.
    pub port: Option<u16>,
}

/// A Service and port that requests are sent to (`backendRefs`, `requestMirror.backendRef`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendRef {
    pub name: String,
    /// Defaults to the route's namespace.
    pub namespace: String,
    /// A port of that service (required, as Gateway API requires it for Services).
    pub port: u16,
    /// Relative weight (default 1; 0 = never picked).
    pub weight: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawParentRef {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default)]
    kind: Option<Text>,
    #[serde(default)]
    group: Option<Text>,
    #[serde(default)]
    port: Option<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackendRef {
    name: Text,
    #[serde(default)]
    namespace: Option<Text>,
    #[serde(default)]
    kind: Option<Text>,
    #[serde(default)]
    group: Option<Text>,
    #[serde(default)]
    port: Option<Text>,
    #[serde(default)]
    weight: Option<Text>,
    /// Accepted by the schema so that the message can say where filters go instead.
    #[serde(default)]
    filters: Option<Spanned<Vec<IgnoredAny>>>,
}

/// The fields backendRefs and the mirror's backendRef share; `at` is the reference itself.
pub(super) struct BackendFields<'r> {
    pub(super) at: Location,
    pub(super) name: &'r Text,
    pub(super) namespace: Option<&'r Text>,
    pub(super) kind: Option<&'r Text>,
    pub(super) group: Option<&'r Text>,
    pub(super) port: Option<&'r Text>,
}

impl Checker<'_> {
    pub(super) fn backend_refs(
        &self,
        raws: &[Spanned<RawBackendRef>],
        scope: &Scope,
    ) -> Result<Vec<BackendRef>, ConfigError> {
        self.at_most(raws, MAX_BACKEND_REFS, "backendRefs", "rule")?;
        self.each(raws.iter().map(|raw| {
            let r = &raw.value;
            if let Some(filters) = &r.filters
                && !filters.value.is_empty()
            {
                return Err(self.err(
                    filters.referenced,
                    "backendRefs[].filters are not supported; put filters on the rule".to_owned(),
                ));
            }
            let weight = match &r.weight {
                Some(w) => self.number(w, "weight", 0, MAX_WEIGHT)?,
                None => 1,
            };
            self.backend(
                &BackendFields {
                    at: raw.referenced,
                    name: &r.name,
                    namespace: r.namespace.as_ref(),
                    kind: r.kind.as_ref(),
                    group: r.group.as_ref(),
                    port: r.port.as_ref(),
                },
                u32::try_from(weight).unwrap_or(u32::MAX),
                scope,
            )
        }))
    }

    /// A Service and port requests are sent to; it must exist.
    pub(super) fn backend(
        &self,
        raw: &BackendFields,
        weight: u32,
        scope: &Scope,
    ) -> Result<BackendRef, ConfigError> {
        self.service_kind(raw.kind, raw.group, "only Service backends are supported")?;
        let Some(port) = raw.port else {
            return Err(self.err(raw.at, "port is required for Service backends".to_owned()));
        };
        let namespace = match raw.namespace {
            Some(ns) => self.namespace(Some(ns))?,
            None => scope.namespace.to_owned(),
        };
        let port = self.service_port(&namespace, raw.name, Some(port), scope.services)?;
        Ok(BackendRef {
            name: raw.name.value.clone(),
            namespace,
            port: port.unwrap_or_default(),
            weight,
        })
    }

    pub(super) fn parent_ref(
        &self,
        raw: &Spanned<RawParentRef>,
        route_namespace: &str,
        services: &[Service],
    ) -> Result<ParentRef, ConfigError> {
        let p = &raw.value;
        self.service_kind(
            p.kind.as_ref(),
            p.group.as_ref(),
            "only Service parents are supported (GAMMA)",
        )?;
        let namespace = match &p.namespace {
            Some(ns) => self.namespace(Some(ns))?,
            None => route_namespace.to_owned(),
        };
        let port = self.service_port(&namespace, &p.name, p.port.as_ref(), services)?;
        Ok(ParentRef {
            name: p.name.value.clone(),
            namespace,
            port,
        })
    }

    /// `kind` absent or Service, `group` absent, "" or "core".
    fn service_kind(
        &self,
        kind: Option<&Text>,
        group: Option<&Text>,
        why: &str,
    ) -> Result<(), ConfigError> {
        if let Some(kind) = kind
            && kind.value != "Service"
        {
            return Err(self.err(
                kind.referenced,
                format!("invalid kind {}: {why}", quote(&kind.value)),
            ));
        }
        if let Some(group) = group
            && !matches!(group.value.as_str(), "" | "core")
        {
            return Err(self.err(
                group.referenced,
                format!("invalid group {}: {why}", quote(&group.value)),
            ));
        }
        Ok(())
    }

    /// The service `namespace/name` must exist and `port`, if given, be one of its ports.
    fn service_port(
        &self,
        namespace: &str,
        name: &Text,
        port: Option<&Text>,
        services: &[Service],
    ) -> Result<Option<u16>, ConfigError> {
        let id = format!("{namespace}/{}", name.value);
        let Some(service) = services
            .iter()
            .find(|s| s.name == name.value && s.namespace == namespace)
        else {
            // Defined, but with an error of its own, already reported.
            if self.broken_services.borrow().contains(&id) {
                return Err(self.reported());
            }
            return Err(self.err(
                name.referenced,
                format!("service {} is not defined under services", quote(&id)),
            ));
        };
        let Some(raw_port) = port else {
            return Ok(None);
        };
        let port = self.port(raw_port)?;
        if service.ports.iter().any(|p| p.port == port) {
            return Ok(Some(port));
        }
        let ports = if service.ports.is_empty() {
            "it has no ports".to_owned()
        } else {
            let list: Vec<String> = service.ports.iter().map(|p| p.port.to_string()).collect();
            format!("its ports: {}", list.join(", "))
        };
        Err(self.err(
            raw_port.referenced,
            format!(
                "port {port} is not a port of service {} ({ports})",
                quote(&id)
            ),
        ))
    }
}

#[cfg(test)]
mod tests;
