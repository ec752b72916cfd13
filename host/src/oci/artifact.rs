//! What a Peregrine rule artifact is, and pushing and pulling one.
//!
//! An OCI image manifest whose config has Peregrine's config media type and
//! whose layers are rule modules, one `.wasm` component per layer, each
//! annotated with its file name, module name, version, contract and digest.
//! Everything a registry answers is checked before it is trusted: media
//! types, sizes (a layer is at most a module's size limit), file names, and
//! digests (the manifest's when the reference pins one, every layer's always).

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::annotations::{ORG_OPENCONTAINERS_IMAGE_CREATED, ORG_OPENCONTAINERS_IMAGE_TITLE};
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest};
use oci_client::{Client, Reference};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{OciError, RegistryOptions, client_for, registry_error};
use crate::rules::MAX_MODULE_BYTES;

/// Media type of a layer holding one rule module (a WebAssembly component).
pub const MODULE_MEDIA_TYPE: &str = "application/vnd.peregrine.rule.module.v1+wasm";
/// Media type of the artifact's config: the modules' metadata as JSON.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.peregrine.rule.config.v1+json";
pub const ANNOTATION_NAME: &str = "vnd.peregrine.rule.name";
pub const ANNOTATION_VERSION: &str = "vnd.peregrine.rule.version";
/// The `peregrine:rules` WIT package version the module was built against.
pub const ANNOTATION_CONTRACT: &str = "vnd.peregrine.rule.contract";
/// `sha256:<hex>` of the module: the digest its alerts carry.
pub const ANNOTATION_DIGEST: &str = "vnd.peregrine.rule.digest";
/// A manifest larger than this is not a rule artifact.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// Modules one artifact may hold.
pub const MAX_LAYERS: usize = 64;

/// One module of an artifact, to push or as pulled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleArtifact {
    /// `<key>.wasm`: the file name it is cached and loaded under.
    pub file_name: String,
    pub bytes: Vec<u8>,
    pub name: String,
    pub version: String,
    pub contract: String,
}

impl ModuleArtifact {
    /// `sha256:<hex>` of the module.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(&self.bytes)))
    }

    fn annotations(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                ORG_OPENCONTAINERS_IMAGE_TITLE.to_string(),
                self.file_name.clone(),
            ),
            (ANNOTATION_NAME.to_string(), self.name.clone()),
            (ANNOTATION_VERSION.to_string(), self.version.clone()),
            (ANNOTATION_CONTRACT.to_string(), self.contract.clone()),
            (ANNOTATION_DIGEST.to_string(), self.digest()),
        ])
    }
}

/// A pulled, verified artifact.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    pub annotations: BTreeMap<String, String>,
    pub modules: Vec<ModuleArtifact>,
}

#[derive(Serialize)]
struct ConfigModule<'a> {
    file: &'a str,
    name: &'a str,
    version: &'a str,
    contract: &'a str,
    digest: String,
    size: usize,
}

/// Pushes modules as one artifact under `reference` (which must have a tag)
/// and returns the manifest digest the registry holds.
pub async fn push(
    reference: &str,
    modules: &[ModuleArtifact],
    options: &RegistryOptions,
) -> Result<String, OciError> {
    let image = super::parse_reference(reference)?;
    if image.digest().is_some() {
        return Err(OciError::Reference {
            reference: reference.to_string(),
            message: "push to a tag, not a digest".into(),
        });
    }
    if modules.is_empty() || modules.len() > MAX_LAYERS {
        return Err(OciError::Setup(format!(
            "an artifact holds 1 to {MAX_LAYERS} modules, not {}",
            modules.len()
        )));
    }
    let layers: Vec<ImageLayer> = modules
        .iter()
        .map(|m| {
            ImageLayer::new(
                m.bytes.clone(),
                MODULE_MEDIA_TYPE.to_string(),
                Some(m.annotations()),
            )
        })
        .collect();
    let config_json = serde_json::to_vec(&serde_json::json!({
        "modules": modules.iter().map(|m| ConfigModule {
            file: &m.file_name,
            name: &m.name,
            version: &m.version,
            contract: &m.contract,
            digest: m.digest(),
            size: m.bytes.len(),
        }).collect::<Vec<_>>()
    }))
    .map_err(|e| OciError::Setup(format!("cannot encode the artifact config: {e}")))?;
    let config = Config::new(config_json, CONFIG_MEDIA_TYPE.to_string(), None);
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let mut annotations = BTreeMap::from([(ORG_OPENCONTAINERS_IMAGE_CREATED.to_string(), now)]);
    if let [only] = modules {
        // One module: its identity on the manifest too, where registry UIs show it.
        annotations.extend(
            only.annotations()
                .into_iter()
                .filter(|(k, _)| k != ORG_OPENCONTAINERS_IMAGE_TITLE),
        );
    }
    let mut manifest = OciImageManifest::build(&layers, &config, Some(annotations));
    // Optional in the spec, but registries and clients branch on it.
    manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());

    let (client, auth) = client_for(&image, options)?;
    let fail = |e| registry_error(&image, &auth, options, e);
    client
        .push(&image, &layers, config, &auth, Some(manifest))
        .await
        .map_err(fail)?;
    client
        .fetch_manifest_digest(&image, &auth)
        .await
        .map_err(fail)
}

/// The manifest digest `reference` names now (a HEAD request).
pub async fn resolve(reference: &Reference, options: &RegistryOptions) -> Result<String, OciError> {
    let (client, auth) = client_for(reference, options)?;
    client
        .fetch_manifest_digest(reference, &auth)
        .await
        .map_err(|e| registry_error(reference, &auth, options, e))
}

/// Pulls and verifies the artifact `reference` names.
pub async fn pull(reference: &Reference, options: &RegistryOptions) -> Result<Artifact, OciError> {
    let (client, auth) = client_for(reference, options)?;
    let fail = |e| registry_error(reference, &auth, options, e);
    let bad = |message: String| OciError::Artifact {
        reference: reference.to_string(),
        message,
    };
    let (body, _) = client
        .pull_manifest_raw(reference, &auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .map_err(fail)?;
    if body.len() > MAX_MANIFEST_BYTES {
        return Err(bad(format!(
            "the manifest is {} bytes, over the {MAX_MANIFEST_BYTES}-byte limit of a rule artifact",
            body.len()
        )));
    }
    // oci-client checked the body against the digest header and the pinned
    // digest; check the pin here as well, where it is a security property.
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    if let Some(pinned) = reference.digest()
        && pinned != actual
    {
        return Err(bad(format!(
            "the manifest's digest is {actual}, not the pinned {pinned}"
        )));
    }
    let manifest = validate_manifest(&body).map_err(bad)?;

    let mut modules = Vec::with_capacity(manifest.layers.len());
    for layer in &manifest.layers {
        let bytes = pull_layer(&client, reference, layer)
            .await
            .map_err(|e| match e {
                LayerError::Registry(e) => fail(e),
                LayerError::Invalid(m) => bad(m),
            })?;
        let ann = layer.annotations.clone().unwrap_or_default();
        let get = |k: &str| ann.get(k).cloned().unwrap_or_default();
        modules.push(ModuleArtifact {
            file_name: get(ORG_OPENCONTAINERS_IMAGE_TITLE),
            bytes,
            name: get(ANNOTATION_NAME),
            version: get(ANNOTATION_VERSION),
            contract: get(ANNOTATION_CONTRACT),
        });
    }
    Ok(Artifact {
        manifest_digest: actual,
        annotations: manifest.annotations.unwrap_or_default(),
        modules,
    })
}

enum LayerError {
    Registry(oci_client::errors::OciDistributionError),
    Invalid(String),
}

/// One layer, no larger than its descriptor says, with the digest it says.
async fn pull_layer(
    client: &Client,
    reference: &Reference,
    layer: &OciDescriptor,
) -> Result<Vec<u8>, LayerError> {
    let declared = layer.size as usize;
    let mut out = CappedWriter {
        buf: Vec::with_capacity(declared.min(16 << 20)),
        limit: declared,
        overflowed: false,
    };
    let result = client.pull_blob(reference, layer, &mut out).await;
    if out.overflowed {
        return Err(LayerError::Invalid(format!(
            "layer {} is larger than the {declared} bytes its descriptor declares",
            layer.digest
        )));
    }
    result.map_err(|e| match e {
        oci_client::errors::OciDistributionError::DigestError(d) => LayerError::Invalid(format!(
            "layer content does not match its digest {}: {d}",
            layer.digest
        )),
        e => LayerError::Registry(e),
    })?;
    if out.buf.len() != declared {
        return Err(LayerError::Invalid(format!(
            "layer {} has {} bytes, its descriptor declares {declared}",
            layer.digest,
            out.buf.len()
        )));
    }
    let actual = format!("sha256:{}", hex::encode(Sha256::digest(&out.buf)));
    if actual != layer.digest {
        return Err(LayerError::Invalid(format!(
            "layer content has digest {actual}, not the {} the manifest names",
            layer.digest
        )));
    }
    Ok(out.buf)
}

/// Collects a blob, refusing bytes beyond what the manifest declared, so a
/// hostile registry cannot make the host buffer an endless body.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl tokio::io::AsyncWrite for CappedWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Poll::Ready(Err(std::io::Error::other(
                "the registry sent more bytes than the manifest declares",
            )));
        }
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A file name a module may be cached under: no path, no hidden file.
fn valid_file_name(name: &str) -> bool {
    name.len() <= 128
        && name.len() > ".wasm".len()
        && name.ends_with(".wasm")
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Parses a manifest and checks it is a Peregrine rule artifact whose
/// layers can be fetched safely.
pub fn validate_manifest(body: &[u8]) -> Result<OciImageManifest, String> {
    let manifest: OciImageManifest = serde_json::from_slice(body)
        .map_err(|e| format!("the manifest is not an OCI image manifest: {e}"))?;
    if manifest.schema_version != 2 {
        return Err(format!(
            "manifest schemaVersion {}, expected 2",
            manifest.schema_version
        ));
    }
    if let Some(mt) = &manifest.media_type
        && mt != OCI_IMAGE_MEDIA_TYPE
    {
        return Err(format!(
            "manifest media type {mt}, expected {OCI_IMAGE_MEDIA_TYPE}"
        ));
    }
    if manifest.config.media_type != CONFIG_MEDIA_TYPE {
        return Err(format!(
            "not a Peregrine rule artifact: its config media type is `{}`, not {CONFIG_MEDIA_TYPE} (push modules with `peregrine rule push`)",
            manifest.config.media_type
        ));
    }
    if manifest.layers.is_empty() || manifest.layers.len() > MAX_LAYERS {
        return Err(format!(
            "{} layers: a rule artifact has 1 to {MAX_LAYERS}",
            manifest.layers.len()
        ));
    }
    let mut names = HashSet::new();
    for layer in &manifest.layers {
        if layer.media_type != MODULE_MEDIA_TYPE {
            return Err(format!(
                "layer {} has media type `{}`, not {MODULE_MEDIA_TYPE}",
                layer.digest, layer.media_type
            ));
        }
        if !valid_digest(&layer.digest) {
            return Err(format!(
                "layer digest `{}` is not sha256:<64 hex>",
                layer.digest
            ));
        }
        if layer.size <= 0 || layer.size as u64 > MAX_MODULE_BYTES {
            return Err(format!(
                "layer {} declares {} bytes; a module is 1 to {MAX_MODULE_BYTES} bytes",
                layer.digest, layer.size
            ));
        }
        let ann = layer.annotations.as_ref();
        let title = ann
            .and_then(|a| a.get(ORG_OPENCONTAINERS_IMAGE_TITLE))
            .map(String::as_str)
            .unwrap_or_default();
        if !valid_file_name(title) {
            return Err(format!(
                "layer {} has title `{title}`: expected a file name like `rules.wasm` (letters, digits, `.`, `_`, `-`)",
                layer.digest
            ));
        }
        if !names.insert(title) {
            return Err(format!("two layers are both named `{title}`"));
        }
        if let Some(d) = ann.and_then(|a| a.get(ANNOTATION_DIGEST))
            && d != &layer.digest
        {
            return Err(format!(
                "layer `{title}` is annotated with digest {d} but its descriptor says {}",
                layer.digest
            ));
        }
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layer: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": format!("sha256:{}", "0".repeat(64)), "size": 2},
            "layers": [layer],
        }))
        .unwrap()
    }

    fn layer(title: &str, size: i64, media_type: &str) -> serde_json::Value {
        serde_json::json!({
            "mediaType": media_type,
            "digest": format!("sha256:{}", "a".repeat(64)),
            "size": size,
            "annotations": {ORG_OPENCONTAINERS_IMAGE_TITLE: title},
        })
    }

    #[test]
    fn a_rule_artifact_manifest_passes() {
        let m = validate_manifest(&manifest(layer("falco.wasm", 10, MODULE_MEDIA_TYPE))).unwrap();
        assert_eq!(m.layers.len(), 1);
    }

    #[test]
    fn hostile_or_foreign_manifests_get_clear_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"<html>oops</html>".to_vec(), "not an OCI image manifest"),
            (b"{}".to_vec(), "not an OCI image manifest"),
            (
                manifest(layer("../../etc/passwd.wasm", 10, MODULE_MEDIA_TYPE)),
                "expected a file name",
            ),
            (
                manifest(layer(".hidden.wasm", 10, MODULE_MEDIA_TYPE)),
                "expected a file name",
            ),
            (
                manifest(layer("rules.so", 10, MODULE_MEDIA_TYPE)),
                "expected a file name",
            ),
            (
                manifest(layer(
                    "r.wasm",
                    (MAX_MODULE_BYTES + 1) as i64,
                    MODULE_MEDIA_TYPE,
                )),
                "a module is 1 to",
            ),
            (
                manifest(layer("r.wasm", -1, MODULE_MEDIA_TYPE)),
                "a module is 1 to",
            ),
            (
                manifest(layer(
                    "r.wasm",
                    10,
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )),
                "not application/vnd.peregrine.rule.module.v1+wasm",
            ),
        ];
        for (body, want) in cases {
            let err = validate_manifest(&body).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
        let mut image: serde_json::Value =
            serde_json::from_slice(&manifest(layer("r.wasm", 1, MODULE_MEDIA_TYPE))).unwrap();
        image["config"]["mediaType"] = "application/vnd.oci.image.config.v1+json".into();
        let err = validate_manifest(&serde_json::to_vec(&image).unwrap()).unwrap_err();
        assert!(err.contains("not a Peregrine rule artifact"), "{err}");
        image["config"]["mediaType"] = CONFIG_MEDIA_TYPE.into();
        image["layers"][0]["annotations"][ANNOTATION_DIGEST] =
            format!("sha256:{}", "b".repeat(64)).into();
        let err = validate_manifest(&serde_json::to_vec(&image).unwrap()).unwrap_err();
        assert!(err.contains("annotated with digest"), "{err}");
        image["layers"] = serde_json::json!([]);
        let err = validate_manifest(&serde_json::to_vec(&image).unwrap()).unwrap_err();
        assert!(err.contains("0 layers"), "{err}");
    }
}
