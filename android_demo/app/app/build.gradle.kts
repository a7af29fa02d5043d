plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.mobilepeft.demo"
    compileSdk = 34

    defaultConfig {
        applicationId = "dev.mobilepeft.demo"
        minSdk = 28
        targetSdk = 34
        versionCode = 1
        versionName = "0.1.0"
        ndk {
            // The ExecuTorch and ONNX Runtime AARs ship these ABIs.
            abiFilters += listOf("arm64-v8a", "x86_64")
        }
    }

    buildTypes {
        release {
            isMinifyEnabled = false
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
    packaging {
        jniLibs {
            // Both AARs bring libc++_shared.so.
            pickFirsts += listOf("**/libc++_shared.so")
        }
    }
}

dependencies {
    implementation(project(":core"))

    // ExecuTorch Android AAR (XNNPACK flavor), the release the exporter pins (pyproject.toml executorch==1.5.1):
    // a .pte loads only in the runtime of its own minor release (docs/mobile.md, "One runtime version";
    // tests/test_runtime_versions.py fails when the pins disagree).
    implementation("org.pytorch:executorch-android:1.5.1")
    implementation("com.facebook.fbjni:fbjni:0.7.0")
    implementation("com.facebook.soloader:soloader:0.10.5")

    // ONNX Runtime on-device training: 1.19.2 is the last release (training packages were deprecated in 1.20).
    // Do not add onnxruntime-android next to it: this AAR already contains the inference API.
    implementation("com.microsoft.onnxruntime:onnxruntime-training-android:1.19.2")
}
