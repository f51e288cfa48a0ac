//! What a new user meets on the first day, kept true: a recreated RabbitMQ container finds its
//! queues (a fixed hostname), nothing is published on every interface unless asked, the base
//! Kubernetes manifests apply on a cluster without any operator, the Docker build image can build
//! the crate, and `rust-version` is one the locked dependencies accept.

use serde_json::Value;

use super::read;

const COMPOSE_FILES: [&str; 2] = ["docker-compose.yml", "deploy/compose/cluster.yml"];

/// The services of a compose file written as block mappings: `(name, the lines of its block)`.
fn compose_services(file: &str) -> Vec<(String, Vec<String>)> {
    let text = read(file);
    let (_, services) = text
        .split_once("\nservices:\n")
        .unwrap_or_else(|| panic!("{file}: no `services:`"));
    let mut found: Vec<(String, Vec<String>)> = Vec::new();
    for line in services.lines() {
        if !line.is_empty() && !line.starts_with(' ') && !line.starts_with('#') {
            break; // the next top-level key (`volumes:`)
        }
        match line.strip_prefix("  ") {
            Some(rest) if !rest.starts_with(' ') && !rest.starts_with('#') && !rest.is_empty() => {
                let name = rest.strip_suffix(':').expect("a service name line");
                found.push((name.to_string(), Vec::new()));
            }
            _ => {
                if let Some((_, block)) = found.last_mut() {
                    block.push(line.to_string());
                }
            }
        }
    }
    assert!(!found.is_empty(), "{file}: no services");
    found
}

/// The items of `key:`'s list in a service block (one indentation level below the service).
fn list_items(block: &[String], key: &str) -> Vec<String> {
    let Some(start) = block.iter().position(|l| l == &format!("    {key}:")) else {
        return Vec::new();
    };
    block[start + 1..]
        .iter()
        .filter(|l| !l.trim_start().starts_with('#'))
        .take_while(|l| l.starts_with("      "))
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|item| item.trim_matches('"').to_string())
        .collect()
}

/// `${NAME:-default}` → `default`, as compose resolves it when `NAME` is unset.
fn with_defaults(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out += &rest[..start];
        let end = rest[start..].find('}').expect("a closed ${…}") + start;
        let reference = &rest[start + 2..end];
        let (_, default) = reference
            .split_once(":-")
            .unwrap_or_else(|| panic!("${{{reference}}} has no default: unset, compose warns and publishes on every interface"));
        out += default;
        rest = &rest[end + 1..];
    }
    out + rest
}

#[test]
fn every_rabbitmq_in_compose_has_a_fixed_hostname() {
    // The official image's node is rabbit@<hostname> and its data folder is named after it: with
    // the container's random hostname a recreated container starts an empty broker.
    for file in COMPOSE_FILES {
        let services = compose_services(file);
        let brokers: Vec<_> = services
            .iter()
            .filter(|(_, block)| block.iter().any(|l| l.contains("image: rabbitmq:")))
            .collect();
        assert!(!brokers.is_empty(), "{file}: a RabbitMQ service");
        for (name, block) in brokers {
            let hostname = block
                .iter()
                .find_map(|l| l.strip_prefix("    hostname: "))
                .unwrap_or_else(|| panic!("{file}: {name} has no `hostname:`"));
            assert!(!hostname.trim().is_empty() && !hostname.contains('$'));
            assert!(
                block
                    .iter()
                    .any(|l| l.trim().ends_with(":/var/lib/rabbitmq")),
                "{file}: {name} keeps its data in a volume"
            );
        }
    }
}

#[test]
fn compose_publishes_no_port_on_every_interface_unless_asked() {
    for file in COMPOSE_FILES {
        let mut published = 0;
        for (name, block) in compose_services(file) {
            for port in list_items(&block, "ports") {
                published += 1;
                let resolved = with_defaults(&port);
                let parts: Vec<&str> = resolved.split(':').collect();
                assert_eq!(
                    parts.len(),
                    3,
                    "{file}: {name} publishes {port:?} without a host address (every interface)"
                );
                assert_eq!(
                    parts[0], "127.0.0.1",
                    "{file}: {name} publishes {port:?} beyond loopback by default"
                );
            }
        }
        assert!(published > 0, "{file}: publishes its ports");
    }
    // The one way to ask is the documented variable.
    let compose = read("docker-compose.yml");
    assert!(compose.contains("${PUBLISH_ADDRESS:-127.0.0.1}:8080:8080"));
    assert!(read("README.md").contains("PUBLISH_ADDRESS=0.0.0.0 docker compose up"));
}

#[test]
fn the_service_reaches_a_receiver_on_the_host_under_compose_on_linux() {
    let services = compose_services("docker-compose.yml");
    let (_, block) = services
        .iter()
        .find(|(name, _)| name == "webhook-dispatcher")
        .expect("the service");
    assert_eq!(
        list_items(block, "extra_hosts"),
        ["host.docker.internal:host-gateway"]
    );
    assert!(read("README.md").contains("http://host.docker.internal:"));
}

/// `apiVersion`s of the kinds every Kubernetes cluster serves (no CRD needed).
const BUILT_IN: [&str; 6] = [
    "v1",
    "apps/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
    "rbac.authorization.k8s.io/v1",
];

#[test]
fn the_base_kustomization_holds_no_operator_kind() {
    let kustomization = read("deploy/kubernetes/kustomization.yaml");
    let (_, resources) = kustomization
        .split_once("\nresources:\n")
        .expect("resources:");
    let files: Vec<&str> = resources
        .lines()
        .take_while(|l| l.starts_with("  - "))
        .map(|l| l.trim_start_matches("  - ").trim())
        .collect();
    assert!(files.contains(&"deployment.yaml"), "{files:?}");
    assert!(
        !kustomization.contains("\ncomponents:"),
        "no component by default"
    );
    for file in files {
        let text = read(&format!("deploy/kubernetes/{file}"));
        let versions: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("apiVersion: "))
            .collect();
        assert!(!versions.is_empty(), "{file}: no apiVersion");
        for version in versions {
            assert!(
                BUILT_IN.contains(&version.trim()),
                "{file}: {version} needs an operator's CRD; put it in a component"
            );
        }
    }
    // What needs an operator is in its component, named in the README.
    for component in ["monitoring", "autoscaling"] {
        let text = read(&format!("deploy/kubernetes/{component}/kustomization.yaml"));
        assert!(text.contains("kind: Component"), "{component}");
        assert!(
            read("README.md").contains(&format!("components: [{component}]")),
            "the README says how to add {component}"
        );
    }
}

/// `major.minor[.patch]` as a comparable triple.
fn version(text: &str) -> (u64, u64, u64) {
    let mut parts = text
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or_else(|_| panic!("{text:?}")));
    let major = parts.next().expect("major");
    let minor = parts.next().expect("minor");
    (major, minor, parts.next().unwrap_or(0))
}

fn rust_version() -> (u64, u64, u64) {
    let manifest = read("Cargo.toml");
    let line = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml declares rust-version");
    version(line.trim_matches('"'))
}

#[test]
fn the_docker_build_image_is_pinned_and_satisfies_rust_version() {
    let dockerfile = read("Dockerfile");
    let image = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .expect("a rust build stage");
    let tag = image.split_whitespace().next().unwrap();
    let (number, _) = tag.split_once('-').unwrap_or((tag, ""));
    assert_eq!(
        number.split('.').count(),
        3,
        "FROM rust:{tag}: pin the whole version (a floating tag builds with whatever is cached)"
    );
    assert!(
        version(number) >= rust_version(),
        "FROM rust:{tag} is older than Cargo.toml's rust-version {:?}",
        rust_version()
    );
    // Gigabytes of build output and fuzz corpora never go to the daemon.
    let ignored = read(".dockerignore");
    for path in ["target", "fuzz/target", "fuzz/corpus"] {
        assert!(ignored.lines().any(|l| l == path), ".dockerignore: {path}");
    }
    // The build and runtime stages share a Debian release (the binary links its glibc).
    let release = tag.rsplit('-').next().unwrap();
    assert!(
        dockerfile.contains(&format!("FROM debian:{release}-slim")),
        "runtime stage on {release}"
    );
}

#[test]
fn rust_version_is_at_least_every_locked_dependency_s_own() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let ours = rust_version();
    let mut checked = 0;
    for package in metadata["packages"].as_array().expect("packages") {
        let Some(theirs) = package["rust_version"].as_str() else {
            continue;
        };
        checked += 1;
        assert!(
            version(theirs) <= ours,
            "{} {} needs Rust {theirs}, above Cargo.toml's rust-version {ours:?}",
            package["name"],
            package["version"]
        );
    }
    assert!(
        checked > 50,
        "only {checked} packages declare a rust-version"
    );
}
