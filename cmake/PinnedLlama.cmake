# Obtains the pinned llama.cpp tree and applies pykvd's patches to it.
#
# The tree is the one vendored in the llama-cpp-python source distribution named
# below. The archive is fetched with pip into a cache shared by every build on
# the machine, checked against its sha256, unpacked into the build directory and
# patched there; it is unpacked again only when the archive or a patch changes.
#
# Result: PYKVD_LLAMA_DIR, the root of a patched llama.cpp tree.

set(PYKVD_LLAMA_SDIST_NAME "llama_cpp_python-0.3.36")
set(PYKVD_LLAMA_SDIST_REQ "llama-cpp-python==0.3.36")
set(PYKVD_LLAMA_SDIST_SHA256 "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e")

function(pykvd_cache_dir out)
    if(DEFINED ENV{PYKVD_CACHE_DIR})
        set(dir "$ENV{PYKVD_CACHE_DIR}")
    elseif(DEFINED ENV{XDG_CACHE_HOME})
        set(dir "$ENV{XDG_CACHE_HOME}/pykvd")
    else()
        set(dir "$ENV{HOME}/.cache/pykvd")
    endif()
    set(${out} "${dir}" PARENT_SCOPE)
endfunction()

function(pykvd_fetch_sdist out)
    pykvd_cache_dir(cache)
    set(dest "${cache}/src")
    set(archive "${dest}/${PYKVD_LLAMA_SDIST_NAME}.tar.gz")
    if(EXISTS "${archive}")
        file(SHA256 "${archive}" have)
        if(NOT have STREQUAL PYKVD_LLAMA_SDIST_SHA256)
            message(STATUS "pykvd: cached ${archive} has the wrong sha256, fetching again")
            file(REMOVE "${archive}")
        endif()
    endif()
    if(NOT EXISTS "${archive}")
        message(STATUS "pykvd: fetching ${PYKVD_LLAMA_SDIST_REQ} source distribution with pip")
        execute_process(
            COMMAND "${Python_EXECUTABLE}" -m pip download --no-deps --no-binary :all:
                    --disable-pip-version-check
                    "${PYKVD_LLAMA_SDIST_REQ}" -d "${dest}"
            RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
        if(NOT rc EQUAL 0 OR NOT EXISTS "${archive}")
            message(FATAL_ERROR "pykvd: pip could not download ${PYKVD_LLAMA_SDIST_REQ}:\n${log}")
        endif()
        file(SHA256 "${archive}" have)
        if(NOT have STREQUAL PYKVD_LLAMA_SDIST_SHA256)
            file(REMOVE "${archive}")
            message(FATAL_ERROR "pykvd: ${archive} sha256 is ${have}, expected ${PYKVD_LLAMA_SDIST_SHA256}")
        endif()
    endif()
    set(${out} "${archive}" PARENT_SCOPE)
endfunction()

function(pykvd_apply_patches tree patches)
    find_package(Git QUIET)
    get_filename_component(tree_parent "${tree}" DIRECTORY)
    foreach(patch IN LISTS patches)
        if(GIT_FOUND)
            # The ceiling keeps git from treating the tree as part of an enclosing
            # repository (the build directory may live inside one), where
            # `git apply` would silently skip paths.
            set(cmd "${CMAKE_COMMAND}" -E env "GIT_CEILING_DIRECTORIES=${tree_parent}"
                    "${GIT_EXECUTABLE}" apply --whitespace=nowarn "${patch}")
        else()
            set(cmd patch -p1 --forward --batch -i "${patch}")
        endif()
        execute_process(COMMAND ${cmd} WORKING_DIRECTORY "${tree}"
                        RESULT_VARIABLE rc OUTPUT_VARIABLE log ERROR_VARIABLE log)
        if(NOT rc EQUAL 0)
            message(FATAL_ERROR "pykvd: patch ${patch} does not apply to ${tree}:\n${log}")
        endif()
        message(STATUS "pykvd: applied ${patch}")
    endforeach()
endfunction()

# A user's own tree (a desktop app's checkout) must already carry the patches.
if(PYKVD_LLAMA_SOURCE_DIR)
    if(NOT EXISTS "${PYKVD_LLAMA_SOURCE_DIR}/include/llama-kvd.h")
        message(FATAL_ERROR
            "pykvd: ${PYKVD_LLAMA_SOURCE_DIR} is not patched (include/llama-kvd.h is missing). "
            "Apply patches/*.patch in order, e.g.: cd ${PYKVD_LLAMA_SOURCE_DIR} && git apply ${PROJECT_SOURCE_DIR}/patches/*.patch")
    endif()
    set(PYKVD_LLAMA_DIR "${PYKVD_LLAMA_SOURCE_DIR}")
    return()
endif()

file(GLOB PYKVD_PATCHES "${PROJECT_SOURCE_DIR}/patches/*.patch")
list(SORT PYKVD_PATCHES)
set(stamp_text "${PYKVD_LLAMA_SDIST_SHA256}\n")
foreach(patch IN LISTS PYKVD_PATCHES)
    file(SHA256 "${patch}" patch_hash)
    string(APPEND stamp_text "${patch_hash}\n")
endforeach()
# Re-run configure (and so re-patch) whenever a patch is edited, added or removed.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${PYKVD_PATCHES} "${PROJECT_SOURCE_DIR}/patches")

set(unpack_root "${CMAKE_BINARY_DIR}/_llama")
set(PYKVD_LLAMA_DIR "${unpack_root}/llama.cpp")
set(stamp "${unpack_root}/patched.stamp")
if(EXISTS "${stamp}")
    file(READ "${stamp}" old_stamp)
endif()
if(NOT old_stamp STREQUAL stamp_text OR NOT EXISTS "${PYKVD_LLAMA_DIR}/CMakeLists.txt")
    pykvd_fetch_sdist(archive)
    file(REMOVE_RECURSE "${unpack_root}")
    file(MAKE_DIRECTORY "${unpack_root}")
    message(STATUS "pykvd: unpacking vendor/llama.cpp from ${archive}")
    file(ARCHIVE_EXTRACT INPUT "${archive}" DESTINATION "${unpack_root}"
         PATTERNS "${PYKVD_LLAMA_SDIST_NAME}/vendor/llama.cpp")
    file(RENAME "${unpack_root}/${PYKVD_LLAMA_SDIST_NAME}/vendor/llama.cpp" "${PYKVD_LLAMA_DIR}")
    file(REMOVE_RECURSE "${unpack_root}/${PYKVD_LLAMA_SDIST_NAME}")
    # The vendored tree carries a submodule pointer (.git file) that would confuse git apply.
    file(REMOVE "${PYKVD_LLAMA_DIR}/.git")
    pykvd_apply_patches("${PYKVD_LLAMA_DIR}" "${PYKVD_PATCHES}")
    file(WRITE "${stamp}" "${stamp_text}")
endif()
