// Renders Ollama Modelfile templates with Go's own text/template, as Ollama does, so the tests check an
// exported TEMPLATE against the tokenizer's chat template with an independent template engine.
//
// stdin: {"template": "...", "cases": [{"Messages": [{"Role": "user", "Content": "..."}], "System": "", "Prompt": ""}]}
// stdout: a JSON list with the rendered text of each case.
package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

// Values holds the fields Ollama passes a template (github.com/ollama/ollama/template.Values) that these
// templates use: the conversation, or for a template without .Messages the system and user prompt.
type Values struct {
	Messages []Message
	System   string
	Prompt   string
	Response string
}

func main() {
	var request struct {
		Template string
		Cases    []Values
	}
	if err := json.NewDecoder(os.Stdin).Decode(&request); err != nil {
		panic(err)
	}
	parsed := template.Must(template.New("modelfile").Parse(request.Template))
	rendered := []string{}
	for _, values := range request.Cases {
		var out stringWriter
		if err := parsed.Execute(&out, values); err != nil {
			panic(err)
		}
		rendered = append(rendered, string(out))
	}
	encoder := json.NewEncoder(os.Stdout)
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(rendered); err != nil {
		panic(err)
	}
}

type stringWriter []byte

func (w *stringWriter) Write(p []byte) (int, error) {
	*w = append(*w, p...)
	return len(p), nil
}
