#[allow(clippy::exit)]
fn main() {
    std::process::exit(cni_core::skel::run(&overlay_plugin::Overlay))
}
