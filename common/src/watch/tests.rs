//! The watcher against real files and a real signal, each change awaited with a deadline.

use std::os::unix::fs::symlink;

use super::*;

const DEADLINE: Duration = Duration::from_secs(10);

async fn next(w: &mut Watcher) -> Change {
    tokio::time::timeout(DEADLINE, w.changed())
        .await
        .expect("a change within the deadline")
}

#[tokio::test]
async fn an_editor_rename_over_the_file_is_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, "a: 1\n").unwrap();
    let mut w = Watcher::new([&file]).unwrap();
    // Twice: the second edit replaces a file that did not exist when watching began.
    for round in 2..4 {
        let tmp = dir.path().join(".config.yaml.swp");
        std::fs::write(&tmp, format!("a: {round}\n")).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        assert_eq!(next(&mut w).await, Change::Files, "edit {round}");
    }
}

/// What the kubelet does to a ConfigMap volume: new files in a fresh hidden directory, then
/// the `..data` symlink is atomically replaced; the visible files are links through it.
#[tokio::test]
async fn a_configmap_symlink_swap_is_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..v1")).unwrap();
    std::fs::write(root.join("..v1/web.yaml"), "v: 1\n").unwrap();
    symlink("..v1", root.join("..data")).unwrap();
    symlink("..data/web.yaml", root.join("web.yaml")).unwrap();
    // Once through the file, once through the directory: both see the swap.
    let mut by_file = Watcher::new([root.join("web.yaml")]).unwrap();
    let mut by_dir = Watcher::new([root]).unwrap();

    // Twice: the second swap replaces a link that did not exist when watching began.
    for (old, new) in [("..v1", "..v2"), ("..v2", "..v3")] {
        std::fs::create_dir(root.join(new)).unwrap();
        std::fs::write(root.join(new).join("web.yaml"), format!("v: {new}\n")).unwrap();
        symlink(new, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join(old)).unwrap();
        assert_eq!(next(&mut by_file).await, Change::Files, "{new}");
        assert_eq!(next(&mut by_dir).await, Change::Files, "{new}");
        assert_eq!(
            std::fs::read_to_string(root.join("web.yaml")).unwrap(),
            format!("v: {new}\n")
        );
    }
}

#[tokio::test]
async fn a_burst_of_events_is_one_change() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Watcher::new([dir.path()]).unwrap();
    for i in 0..20 {
        std::fs::write(dir.path().join(format!("f{i}.yaml")), "x").unwrap();
    }
    assert_eq!(next(&mut w).await, Change::Files);
    assert!(w.events.try_recv().is_err(), "the burst was consumed whole");
}

#[tokio::test]
async fn sighup_reaches_every_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Watcher::new([dir.path()]).unwrap();
    let mut signal_only = Watcher::new(Vec::<PathBuf>::new()).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(next(&mut files).await, Change::Signal);
    assert_eq!(next(&mut signal_only).await, Change::Signal);
}

#[test]
fn a_file_is_watched_through_its_directory_and_a_directory_itself() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.yaml");
    std::fs::write(&file, "").unwrap();
    assert_eq!(
        directories([file.as_path(), dir.path(), Path::new("b.yaml")]),
        [dir.path().to_path_buf(), PathBuf::from(".")]
    );
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let e = Watcher::new(["/nonexistent-tollgate/x.yaml"]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot watch /nonexistent-tollgate"),
        "{e}"
    );
}
