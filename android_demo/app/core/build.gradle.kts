// Pure Kotlin/JVM: all of the app's logic (manifest, tokenizer, template, preprocessing, benchmark,
// training loop). No Android or third-party dependencies, Kotlin 1.3-compatible source, so it also
// compiles with a bare kotlinc (tests/test_android_core.py does that, with no Gradle).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

java {
    sourceCompatibility = JavaVersion.VERSION_17
    targetCompatibility = JavaVersion.VERSION_17
}

kotlin {
    jvmToolchain(17)
}

// The tests use their own harness (TestMain.kt), not JUnit: `./gradlew :core:coreTests --args=<fixture dir>`.
tasks.register<JavaExec>("coreTests") {
    group = "verification"
    description = "Runs the core tests (fixture directory from tests/test_android_core.py as the argument)."
    classpath = project.extensions.getByType<SourceSetContainer>()["test"].runtimeClasspath
    mainClass.set("dev.mobilepeft.core.TestMainKt")
}
