//! GPU status from NVIDIA's Management Library (NVML, `libnvidia-ml.so.1`, loaded at run time
//! through `nvml-wrapper`).
//!
//! NVML is loaded once at start-up ([`GpuProbe::init`]). A machine without the NVIDIA driver (or
//! a container without the driver's libraries mounted) is not an error for the sidecar: the probe
//! then reports `available: false` with the reason in `error`. Every read goes to NVML afresh
//! ([`GpuProbe::status`]); the calls are short, blocking FFI calls (well under a millisecond per
//! device on a healthy GPU).

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::{MemoryInfo, ProcessInfo};
use nvml_wrapper::structs::device::MigMode;
use serde::Serialize;

/// The GPU snapshot served in `/v1/status` as `"gpu"` (snake_case JSON; absent values are
/// `null`). `available && devices.len() >= N` is what "N GPUs verified" means.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuStatus {
    /// NVML is loaded and at least one device could be read (`devices` is non-empty).
    pub available: bool,
    /// The NVIDIA driver version, e.g. `"550.54.15"` (NVML `nvmlSystemGetDriverVersion`).
    pub driver_version: Option<String>,
    /// The highest CUDA version the driver supports, `"major.minor"`, e.g. `"12.4"` (NVML
    /// `nvmlSystemGetCudaDriverVersion_v2`).
    pub cuda_driver_version: Option<String>,
    /// The devices that could be read, in NVML index order.
    pub devices: Vec<GpuDevice>,
    /// Why the GPU is unavailable or what could not be read (several reasons joined by `"; "`);
    /// `None` when everything was read.
    pub error: Option<String>,
}

/// One GPU as NVML reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuDevice {
    /// NVML device index (`nvmlDeviceGetHandleByIndex_v2`); it follows PCI bus order, which may
    /// differ from CUDA's default ordering.
    pub index: u32,
    /// Product name, e.g. `"NVIDIA H100 80GB HBM3"` (`nvmlDeviceGetName`).
    pub name: String,
    /// Globally unique, immutable id, e.g. `"GPU-8c6f…"` (`nvmlDeviceGetUUID`).
    pub uuid: String,
    /// Installed framebuffer memory, bytes (`nvmlDeviceGetMemoryInfo_v2`, `total`).
    pub memory_total_bytes: u64,
    /// Allocated framebuffer memory, bytes, including the driver's reservation
    /// (`nvmlDeviceGetMemoryInfo_v2`, `used`).
    pub memory_used_bytes: u64,
    /// Percent (0–100) of the last sample period during which a kernel ran
    /// (`nvmlDeviceGetUtilizationRates`, `gpu`); `None` when not supported (e.g. MIG mode) or
    /// not readable.
    pub utilization_percent: Option<u32>,
    /// GPU die temperature, °C (`nvmlDeviceGetTemperature`, `NVML_TEMPERATURE_GPU`); `None` when
    /// not supported or not readable.
    pub temperature_celsius: Option<u32>,
    /// Whether MIG (Multi-Instance GPU) mode is on now (`nvmlDeviceGetMigMode`, `current`);
    /// `None` when the GPU does not support MIG or the mode cannot be read.
    pub mig_mode: Option<bool>,
    /// The MIG devices of this GPU that this container can see, in NVML MIG index order
    /// (`nvmlDeviceGetMigDeviceHandleByIndex`); empty when MIG is off. In Kubernetes a container
    /// given `nvidia.com/mig-<profile>` sees its slices here, under their parent GPU.
    pub mig_devices: Vec<MigDevice>,
    /// The compute processes NVML lists on this GPU (or on its MIG devices), with their GPU
    /// memory (`nvmlDeviceGetComputeRunningProcesses`); `None` when NVML cannot list them. PIDs
    /// are the host's: in a container they are not this container's PIDs.
    pub processes: Option<Vec<GpuProcess>>,
}

/// One MIG device (a slice of a GPU) as NVML reports it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MigDevice {
    /// MIG index on the parent GPU.
    pub index: u32,
    /// Its UUID, `"MIG-…"` (`nvmlDeviceGetUUID`).
    pub uuid: String,
    /// NVML's name, e.g. `"NVIDIA A100-SXM4-40GB MIG 1g.5gb"` (`nvmlDeviceGetName`).
    pub name: String,
    /// The MIG profile, e.g. `"1g.5gb"`: the word after `MIG` in the name ([`mig_profile`]), as
    /// in the Kubernetes resource `nvidia.com/mig-1g.5gb`; `None` when the name has none.
    pub profile: Option<String>,
    /// The slice's framebuffer memory, bytes (`nvmlDeviceGetMemoryInfo_v2`, `total`).
    pub memory_total_bytes: u64,
    /// Allocated memory of the slice, bytes (`used`).
    pub memory_used_bytes: u64,
}

/// One compute process NVML lists on a GPU.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GpuProcess {
    /// The process id, in the host's PID namespace.
    pub pid: u32,
    /// Its name (`nvmlSystemGetProcessName`); `None` where NVML cannot read it (another PID
    /// namespace).
    pub name: Option<String>,
    /// GPU memory it uses, bytes; `None` where NVML does not say (`NVML_VALUE_NOT_AVAILABLE`).
    pub used_memory_bytes: Option<u64>,
    /// The MIG device it runs on (its UUID), when the GPU is in MIG mode.
    pub mig_device_uuid: Option<String>,
}

/// The MIG profile in a MIG device's NVML name: the word after the last `MIG`
/// (`"NVIDIA A100-SXM4-40GB MIG 1g.5gb"` -> `"1g.5gb"`, `"NVIDIA H100 80GB HBM3 MIG 1g.10gb+me"`
/// -> `"1g.10gb+me"`); `None` when the name has no such word.
pub fn mig_profile(name: &str) -> Option<String> {
    let mut last = None;
    for w in name.split_whitespace().rev() {
        if w == "MIG" {
            return last.map(str::to_owned);
        }
        last = Some(w);
    }
    None
}

/// Access to NVML, loaded once and shared (it is `Send + Sync`: NVML is thread-safe and
/// `nvml_wrapper::Nvml` is `Send + Sync`).
#[derive(Debug)]
pub struct GpuProbe {
    nvml: Option<Nvml>,
    /// Why `nvml` is `None`.
    unavailable_reason: String,
}

impl GpuProbe {
    /// Loads NVML (`libnvidia-ml.so.1`) and initializes it. Never panics: when the library is
    /// missing or the driver does not answer, the probe reports no GPU, with
    /// `"NVML not available: <reason>"` as the error.
    pub fn init() -> Self {
        match Nvml::init() {
            Ok(nvml) => Self {
                nvml: Some(nvml),
                unavailable_reason: String::new(),
            },
            Err(err) => Self::unavailable(format!("NVML not available: {}", describe(&err))),
        }
    }

    /// A probe that reports no GPU, with `reason` as the error (tests, `--no-gpu`).
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            nvml: None,
            unavailable_reason: reason.into(),
        }
    }

    /// Whether NVML was loaded (devices may still be zero or unreadable).
    pub fn nvml_loaded(&self) -> bool {
        self.nvml.is_some()
    }

    /// Reads the driver and every device now. A device whose handle, name, UUID or memory cannot
    /// be read is left out and the failure is reported in `error`; the other devices are still
    /// listed. Utilization and temperature are optional (`None` when unreadable, not an error).
    pub fn status(&self) -> GpuStatus {
        let Some(nvml) = &self.nvml else {
            return GpuStatus {
                available: false,
                driver_version: None,
                cuda_driver_version: None,
                devices: Vec::new(),
                error: Some(self.unavailable_reason.clone()),
            };
        };
        let mut errors = Vec::new();
        let driver_version = nvml
            .sys_driver_version()
            .map_err(|e| errors.push(format!("driver version: {}", describe(&e))))
            .ok();
        let cuda_driver_version = nvml
            .sys_cuda_driver_version()
            .map(format_cuda_version)
            .map_err(|e| errors.push(format!("CUDA driver version: {}", describe(&e))))
            .ok();
        let count = match nvml.device_count() {
            Ok(count) => count,
            Err(e) => {
                errors.push(format!("device count: {}", describe(&e)));
                0
            }
        };
        let mut devices = Vec::with_capacity(count as usize);
        for index in 0..count {
            match read_device(nvml, index) {
                Ok(device) => devices.push(device),
                Err(e) => errors.push(format!("device {index}: {e}")),
            }
        }
        if count == 0 && errors.is_empty() {
            errors.push("NVML reports no GPU devices".to_owned());
        }
        GpuStatus {
            available: !devices.is_empty(),
            driver_version,
            cuda_driver_version,
            devices,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
        }
    }

    /// Number of devices NVML reports (`nvmlDeviceGetCount_v2`); 0 when NVML is unavailable or
    /// the count cannot be read.
    pub fn device_count(&self) -> u32 {
        self.nvml
            .as_ref()
            .and_then(|n| n.device_count().ok())
            .unwrap_or(0)
    }
}

fn read_device(nvml: &Nvml, index: u32) -> Result<GpuDevice, String> {
    let what = |field: &str, e: NvmlError| format!("{field}: {}", describe(&e));
    let device = nvml.device_by_index(index).map_err(|e| what("handle", e))?;
    let name = device.name().map_err(|e| what("name", e))?;
    let uuid = device.uuid().map_err(|e| what("uuid", e))?;
    let memory = device.memory_info().map_err(|e| what("memory", e))?;
    // NotSupported (no MIG on this GPU) reads as unknown.
    let mig_mode = device.mig_mode().ok().map(|m| mig_enabled(&m));
    let mut mig_devices = Vec::new();
    let mut processes: Option<Vec<GpuProcess>> = None;
    let mut add_processes = |dev: &nvml_wrapper::Device<'_>, mig_uuid: Option<&str>| {
        if let Ok(list) = dev.running_compute_processes() {
            processes
                .get_or_insert_with(Vec::new)
                .extend(gpu_processes(&list, mig_uuid, |pid| {
                    nvml.sys_process_name(pid, 256).ok()
                }));
        }
    };
    if mig_mode == Some(true) {
        let max = device.mig_device_count().unwrap_or(0);
        for mig_index in 0..max {
            // Empty slots and slices of other containers answer NotFound: not listed.
            let Ok(mig) = device.mig_device_by_index(mig_index) else {
                continue;
            };
            let (Ok(mig_name), Ok(mig_uuid)) = (mig.name(), mig.uuid()) else {
                continue;
            };
            add_processes(&mig, Some(&mig_uuid));
            mig_devices.push(mig_device(
                mig_index,
                mig_name,
                mig_uuid,
                mig.memory_info().ok().as_ref(),
            ));
        }
    } else {
        add_processes(&device, None);
    }
    Ok(GpuDevice {
        index,
        name,
        uuid,
        memory_total_bytes: memory.total,
        memory_used_bytes: memory.used,
        utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
        temperature_celsius: device.temperature(TemperatureSensor::Gpu).ok(),
        mig_mode,
        mig_devices,
        processes,
    })
}

/// Whether NVML's MIG mode reads "enabled" now (`current == NVML_DEVICE_MIG_ENABLE`, 1).
pub fn mig_enabled(mode: &MigMode) -> bool {
    mode.current == 1
}

/// A MIG device from what NVML gives for it: its index, name, UUID and memory (absent: 0).
pub fn mig_device(
    index: u32,
    name: String,
    uuid: String,
    memory: Option<&MemoryInfo>,
) -> MigDevice {
    MigDevice {
        index,
        profile: mig_profile(&name),
        uuid,
        name,
        memory_total_bytes: memory.map_or(0, |m| m.total),
        memory_used_bytes: memory.map_or(0, |m| m.used),
    }
}

/// The processes NVML lists (`nvmlDeviceGetComputeRunningProcesses`) as reported: GPU memory
/// `None` where NVML says `NVML_VALUE_NOT_AVAILABLE`, the name from `name_of` (NVML's
/// `nvmlSystemGetProcessName`, `None` where it cannot read it), and the MIG device it runs on.
pub fn gpu_processes(
    list: &[ProcessInfo],
    mig_uuid: Option<&str>,
    name_of: impl Fn(u32) -> Option<String>,
) -> Vec<GpuProcess> {
    list.iter()
        .map(|p| GpuProcess {
            pid: p.pid,
            name: name_of(p.pid),
            used_memory_bytes: match p.used_gpu_memory {
                UsedGpuMemory::Used(bytes) => Some(bytes),
                UsedGpuMemory::Unavailable => None,
            },
            mig_device_uuid: mig_uuid.map(str::to_owned),
        })
        .collect()
}

/// NVML encodes the CUDA version as `1000 * major + 10 * minor` (e.g. 12040 = 12.4).
fn format_cuda_version(version: i32) -> String {
    format!(
        "{}.{}",
        nvml_wrapper::cuda_driver_version_major(version),
        nvml_wrapper::cuda_driver_version_minor(version)
    )
}

/// The error's text with its sources (e.g. the dlopen message behind `LibloadingError`).
fn describe(err: &NvmlError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_is_send_sync() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<GpuProbe>();
        assert_send_sync::<std::sync::Arc<GpuProbe>>();
    }

    /// On a machine without the NVIDIA driver (CI, this dev box) `init` must not panic and must
    /// report the absence. On a GPU machine it must report consistent data.
    #[test]
    fn init_without_driver_reports_unavailable() {
        let probe = GpuProbe::init();
        let status = probe.status();
        eprintln!("{status:?}");
        if probe.nvml_loaded() {
            assert_eq!(status.available, !status.devices.is_empty());
            assert!(probe.device_count() as usize >= status.devices.len());
            return;
        }
        assert!(!status.available);
        assert!(status.devices.is_empty());
        assert_eq!(status.driver_version, None);
        assert_eq!(probe.device_count(), 0);
        let error = status.error.expect("an error when NVML is absent");
        assert!(error.starts_with("NVML not available: "), "{error}");
        assert!(error.contains("NVML"), "{error}");
    }

    #[test]
    fn unavailable_probe_reports_reason() {
        let probe = GpuProbe::unavailable("disabled by --no-gpu");
        assert!(!probe.nvml_loaded());
        assert_eq!(probe.device_count(), 0);
        assert_eq!(
            probe.status(),
            GpuStatus {
                available: false,
                driver_version: None,
                cuda_driver_version: None,
                devices: Vec::new(),
                error: Some("disabled by --no-gpu".into()),
            }
        );
    }

    #[test]
    fn status_serializes_snake_case_with_nulls() {
        let status = GpuStatus {
            available: true,
            driver_version: Some("550.54.15".into()),
            cuda_driver_version: Some("12.4".into()),
            devices: vec![GpuDevice {
                index: 0,
                name: "NVIDIA H100 80GB HBM3".into(),
                uuid: "GPU-00000000-0000-0000-0000-000000000000".into(),
                memory_total_bytes: 85_520_809_984,
                memory_used_bytes: 1_048_576,
                utilization_percent: None,
                temperature_celsius: Some(31),
                mig_mode: Some(true),
                mig_devices: vec![MigDevice {
                    index: 0,
                    uuid: "MIG-11111111-1111-1111-1111-111111111111".into(),
                    name: "NVIDIA H100 80GB HBM3 MIG 1g.10gb".into(),
                    profile: mig_profile("NVIDIA H100 80GB HBM3 MIG 1g.10gb"),
                    memory_total_bytes: 10_995_116_278,
                    memory_used_bytes: 0,
                }],
                processes: Some(vec![GpuProcess {
                    pid: 4242,
                    name: None,
                    used_memory_bytes: Some(1_048_576),
                    mig_device_uuid: Some("MIG-11111111-1111-1111-1111-111111111111".into()),
                }]),
            }],
            error: None,
        };
        let json = serde_json::to_value(&status).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "available": true,
                "driver_version": "550.54.15",
                "cuda_driver_version": "12.4",
                "devices": [{
                    "index": 0,
                    "name": "NVIDIA H100 80GB HBM3",
                    "uuid": "GPU-00000000-0000-0000-0000-000000000000",
                    "memory_total_bytes": 85_520_809_984u64,
                    "memory_used_bytes": 1_048_576,
                    "utilization_percent": null,
                    "temperature_celsius": 31,
                    "mig_mode": true,
                    "mig_devices": [{"index": 0, "uuid": "MIG-11111111-1111-1111-1111-111111111111",
                        "name": "NVIDIA H100 80GB HBM3 MIG 1g.10gb", "profile": "1g.10gb",
                        "memory_total_bytes": 10_995_116_278u64, "memory_used_bytes": 0}],
                    "processes": [{"pid": 4242, "name": null, "used_memory_bytes": 1_048_576,
                        "mig_device_uuid": "MIG-11111111-1111-1111-1111-111111111111"}]
                }],
                "error": null
            })
        );
        let unavailable = serde_json::to_value(GpuProbe::unavailable("x").status()).expect("ser");
        assert_eq!(
            unavailable,
            serde_json::json!({"available": false, "driver_version": null,
                "cuda_driver_version": null, "devices": [], "error": "x"})
        );
    }

    #[test]
    fn mig_profiles_come_from_the_mig_device_name() {
        assert_eq!(
            mig_profile("NVIDIA A100-SXM4-40GB MIG 1g.5gb").as_deref(),
            Some("1g.5gb")
        );
        assert_eq!(
            mig_profile("NVIDIA H100 80GB HBM3 MIG 3g.40gb").as_deref(),
            Some("3g.40gb")
        );
        assert_eq!(
            mig_profile("NVIDIA H200 MIG 1g.18gb+me").as_deref(),
            Some("1g.18gb+me")
        );
        assert_eq!(mig_profile("NVIDIA H100 80GB HBM3"), None);
        assert_eq!(mig_profile("MIG"), None);
    }

    #[test]
    fn nvml_data_becomes_mig_devices_and_processes() {
        assert!(mig_enabled(&MigMode {
            current: 1,
            pending: 1
        }));
        assert!(!mig_enabled(&MigMode {
            current: 0,
            pending: 1
        }));
        let mem = MemoryInfo {
            free: 9,
            reserved: 1,
            total: 20,
            used: 11,
            version: 0,
        };
        let mig = mig_device(
            2,
            "NVIDIA H200 MIG 1g.18gb".into(),
            "MIG-2".into(),
            Some(&mem),
        );
        assert_eq!(mig.profile.as_deref(), Some("1g.18gb"));
        assert_eq!((mig.memory_total_bytes, mig.memory_used_bytes), (20, 11));
        let list = [
            ProcessInfo {
                pid: 7,
                used_gpu_memory: UsedGpuMemory::Used(18_467_340_288),
                gpu_instance_id: Some(1),
                compute_instance_id: Some(0),
            },
            ProcessInfo {
                pid: 8,
                used_gpu_memory: UsedGpuMemory::Unavailable,
                gpu_instance_id: None,
                compute_instance_id: None,
            },
        ];
        let procs = gpu_processes(&list, Some("MIG-2"), |pid| {
            (pid == 7).then(|| "ollama".to_owned())
        });
        assert_eq!(
            procs,
            vec![
                GpuProcess {
                    pid: 7,
                    name: Some("ollama".into()),
                    used_memory_bytes: Some(18_467_340_288),
                    mig_device_uuid: Some("MIG-2".into()),
                },
                GpuProcess {
                    pid: 8,
                    name: None,
                    used_memory_bytes: None,
                    mig_device_uuid: Some("MIG-2".into()),
                },
            ]
        );
    }

    #[test]
    fn cuda_version_formatting() {
        assert_eq!(format_cuda_version(12040), "12.4");
        assert_eq!(format_cuda_version(11080), "11.8");
        assert_eq!(format_cuda_version(13000), "13.0");
    }

    /// Needs an NVIDIA GPU and driver. Run on a GPU machine with
    /// `cargo test -p codex-sidecar gpu -- --ignored`.
    #[test]
    #[ignore = "needs an NVIDIA GPU and driver"]
    fn gpu_machine_reports_devices() {
        let probe = GpuProbe::init();
        let status = probe.status();
        eprintln!(
            "{}",
            serde_json::to_string_pretty(&status).unwrap_or_default()
        );
        assert!(probe.nvml_loaded(), "{:?}", status.error);
        assert!(status.available, "{:?}", status.error);
        assert!(status.driver_version.is_some());
        assert!(probe.device_count() >= 1);
        assert!(!status.devices.is_empty());
        for device in &status.devices {
            assert!(!device.name.is_empty());
            assert!(device.uuid.starts_with("GPU-") || device.uuid.starts_with("MIG-"));
            assert!(device.memory_total_bytes > 0);
            assert!(device.memory_used_bytes <= device.memory_total_bytes);
            if device.mig_mode != Some(true) {
                assert!(device.mig_devices.is_empty(), "{device:?}");
            }
            for mig in &device.mig_devices {
                assert!(mig.uuid.starts_with("MIG-"), "{mig:?}");
                assert!(
                    mig.profile.is_some(),
                    "a MIG device names its profile: {mig:?}"
                );
                assert!(mig.memory_total_bytes <= device.memory_total_bytes);
            }
            for p in device.processes.iter().flatten() {
                if let Some(used) = p.used_memory_bytes {
                    assert!(used <= device.memory_total_bytes, "{p:?}");
                }
            }
        }
    }
}
