"""Sample firmware manifests with CycloneDX SBOMs, and the script that regenerates them."""
