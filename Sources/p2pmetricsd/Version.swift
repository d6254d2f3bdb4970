// Generated from the top-level VERSION file by `make version`; do not edit (a test checks it).
/// The release version of p2pmetricsd: `--version`, `p2pmetricsd_build_info` and the package.
let p2pmetricsdVersion = "1.0.0"
